"""Shipping: the shipper moves spooled batches to a sink and acts on the retry decision."""

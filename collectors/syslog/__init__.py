"""The syslog-file source: ``collector`` (reading), ``files`` (which files, rotation), ``tail``
(one followed file), ``parse`` (the line formats)."""

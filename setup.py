"""The compiled parts of the package (both optional): the journald collector's row reader and
redaction's trigger scan.

Everything else is in pyproject.toml. Where no C compiler (or no libsystemd headers) is at hand
the build goes on without them, and the pure-Python paths give the same events:
collectors/journald/rows.py's reader, agent/pipeline/redact.py's regex scan.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collectors.journald._rows",
            ["collectors/journald/_rows.c", "collectors/journald/format.c"],
            depends=["collectors/journald/entry.h", "collectors/journald/blake2b.h", "agent/pipeline/triggers.h",
                     "agent/pipeline/cbuf.h"],
            include_dirs=["agent/pipeline"],  # triggers.h: redaction's trigger words
            libraries=["systemd"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
        Extension(
            "collectors.syslog._lines",
            ["collectors/syslog/_lines.c"],
            depends=["agent/pipeline/cbuf.h", "agent/pipeline/triggers.h"],
            include_dirs=["agent/pipeline"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
        Extension(
            "agent.pipeline._scan",
            ["agent/pipeline/_scan.c"],
            depends=["agent/pipeline/triggers.h"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
    ]
)

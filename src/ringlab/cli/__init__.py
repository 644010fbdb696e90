"""The ``ringlab`` command, the top layer of the library (docs/internals.md draws the layers).

``main`` (the console script ``ringlab.cli:main``, and ``python -m ringlab.cli``) parses and runs
a command. The modules, each importing only those listed after it and the layers below:

- ``main``: the parser, the in-process commands (run, boot, asm, disasm, bench, isa, completion)
  and the exit statuses' handling;
- ``deployment``: the commands that talk to a deployment (up, vm ..., top, run/boot --via);
- ``launchers``: ``vm create --launcher``, through ``launch`` (guest services as processes or
  containers);
- ``demo``: ``ringlab demo``; ``bench``: the ``ringlab bench`` suites;
- ``termout`` (tables and progress on a terminal), ``isa_doc`` (the instruction table as text and
  Markdown), ``exitstatus`` (every exit status, once).

``from ringlab.cli import main`` is the function; the module is ``ringlab.cli.main`` in
``sys.modules`` (``from ringlab.cli.main import build_parser``).
"""

from __future__ import annotations

from ringlab.cli.main import main

__all__ = ["main"]

"""``python -m ringlab_guest``: one guest OS that owns one VM (see ``service.py``)."""

from ringlab_guest.service import main

raise SystemExit(main())

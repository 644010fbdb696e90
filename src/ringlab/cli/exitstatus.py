"""Every exit status of the ``ringlab`` command, defined once.

The command's own statuses (every command):

    ======  ====================  ==============================================================
    status  name                  meaning
    ======  ====================  ==============================================================
    0       ``EXIT_OK``           the command itself worked, whatever the guest did
    1       ``EXIT_INTERNAL``     an unexpected error: a bug in Ringlab (it asks for a report;
                                  ``--debug`` or ``RINGLAB_DEBUG=1`` prints the traceback)
    2       ``EXIT_USAGE``        bad usage: an unknown option or value, a program that does not
                                  assemble, a file that is not an image or cannot be read
    3       ``EXIT_DEPLOYMENT``   a deployment is unreachable, refuses the caller, or cannot be
                                  started
    4       ``EXIT_CHECK_FAILED`` ``ringlab chaos run`` / ``chaos check``: a property of the
                                  history failed (a lost VM, a differing console, a stale commit,
                                  state that went backwards); the verdict says which
    130     ``EXIT_INTERRUPTED``  interrupted (Ctrl-C)
    ======  ====================  ==============================================================

With ``--guest-status`` (``run``, ``boot``, ``vm wait``), a run that worked exits with a status
that says how the guest ended instead of 0, in the spirit of QEMU's ``isa-debug-exit``:

    ==========  ==========================  ====================================================
    status      name                        the guest ...
    ==========  ==========================  ====================================================
    0-255       (its code)                  powered off with that code (``out 0xF4``): reason
                                            ``poweroff``
    250         ``GUEST_HALT``              halted with nothing left to wake it: ``halt``
    251         ``GUEST_SHUTDOWN``          triple-faulted: ``shutdown``
    252         ``GUEST_LIMIT``             reached ``--max-instructions``: ``limit``
    253         ``GUEST_REFUSED``           was refused by the technique (a stock kernel under
                                            ``pv``): ``refused``
    254         ``GUEST_STOPPED``           was stopped by the operator (``vm stop``; ``vm wait``
                                            only): ``stopped``
    ==========  ==========================  ====================================================

A power-off code of 250-254 is therefore ambiguous under ``--guest-status``; a grader that cares
reads ``--json`` instead.  Statuses 1, 2, 3 and 130 keep their meaning with ``--guest-status``:
they say the run itself did not work.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_DEPLOYMENT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "GUEST_HALT",
    "GUEST_LIMIT",
    "GUEST_REFUSED",
    "GUEST_SHUTDOWN",
    "GUEST_STATUSES",
    "GUEST_STOPPED",
    "guest_status",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DEPLOYMENT = 3
EXIT_CHECK_FAILED = 4
EXIT_INTERRUPTED = 130

GUEST_HALT = 250
GUEST_SHUTDOWN = 251
GUEST_LIMIT = 252
GUEST_REFUSED = 253
GUEST_STOPPED = 254

GUEST_STATUSES: dict[str, int] = {
    "halt": GUEST_HALT,
    "halted": GUEST_HALT,  # the services' VM status
    "shutdown": GUEST_SHUTDOWN,
    "limit": GUEST_LIMIT,
    "refused": GUEST_REFUSED,
    "stopped": GUEST_STOPPED,
}
"""Exit reason (or VM status) -> status under ``--guest-status``, for every end but ``poweroff``."""


def guest_status(reason: str, code: int | None) -> int:
    """The process status under ``--guest-status`` for a guest that ended with ``reason`` (an exit
    reason of the run contract, or a VM's final status) and power-off ``code``.

    ``poweroff`` gives the code itself (0-255; a missing code counts as 0); the other reasons the
    table in this module's docstring.  Raises ValueError for a reason that is not an end."""
    if reason == "poweroff":
        return (code or 0) & 0xFF
    try:
        return GUEST_STATUSES[reason]
    except KeyError:
        raise ValueError(
            f"{reason!r} is not how a guest ends; expected poweroff or one of {', '.join(GUEST_STATUSES)}"
        ) from None

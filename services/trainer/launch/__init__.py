"""Launchers: how an attempt's torchrun workers start, are watched and are killed.

One interface (``Launcher`` / ``RunningAttempt``), two implementations: ``local``
(torchrun subprocesses on this machine, the default) and ``kubernetes`` (the same worker
command as an indexed Job with torchrun rendezvous).
"""

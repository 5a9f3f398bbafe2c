"""The command line room: ``xtuner-llava-swap SUBCOMMAND`` (``python -m xtuner_llava_swap``).

:mod:`.main` is the dispatcher: each subcommand is a module with ``main(argv)``, imported
when it runs (``convert`` is :mod:`xtuner_llava_swap.export.cli`, ``profiles``
:mod:`xtuner_llava_swap.profiles.__main__`). This room holds the subcommands that belong to
no stage: ``check-data`` (the data preflight's command line), ``list-cfg``/``copy-cfg`` (the
configs shipped in the wheel) and the environment's ``doctor``, ``install-startup``,
``cpu-cfg-options``. It comes last: it may import every room, no room imports it.
"""

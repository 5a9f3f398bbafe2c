"""The inference room: everything that generates with a trained LLaVA goes through it.

:mod:`.prompt` renders a conversation as training renders it (the run's template, default
system prompt, image places, bos, ids cut where the reply starts); :mod:`.generation`
generates for a batch of conversations on any loaded model kind (xtuner's model of a run,
a Hugging Face export, an official-layout export), stopping on the template's stop ids.
These two import neither the training room nor the export: EvaluateChatHook (training) and
``--verify`` (export) generate through them. :mod:`.loading` builds a generator from what a
user has (CONFIG + a checkpoint, or an export folder); :mod:`.answers` reads the option a
reply chooses; :mod:`.benchmarks` reads MMBench TSVs and VQA JSONL files;
:mod:`.chat_cli` and :mod:`.eval_cli` are ``tools/chat.py`` and ``tools/eval.py``.

This ``__init__`` imports nothing, so the training hook importing the two first modules
costs only them.
"""

"""The training room: the components an xtuner config names and ``xtuner train`` runs with.

:mod:`.tokenizers` (``build_tokenizer``, the ``type`` of every tokenizer dict, with the
profile's token policy and the contract check), :mod:`.hooks` (``EvaluateChatHook``),
:mod:`.llava_model` (``LLaVASwapModel``), :mod:`.run_record_hook` (``RunRecordHook``),
:mod:`.configs` (``swap_llm`` / ``swap_vision_tower``, which rewrite a config to use them)
and :mod:`.cpu_options` (the ``--cfg-options`` that run the GPU configs on a CPU).

Configs import these modules by their full names (mmengine imports a module when it builds
an object the config names from it), so this ``__init__`` imports nothing: importing one
component costs only what that component needs. The data pipeline
(:mod:`xtuner_llava_swap.data`) imports nothing of this room: it builds the tokenizer dict a
config gives it (whose ``type`` is :func:`.tokenizers.build_tokenizer`) and checks profile
agreement with :mod:`xtuner_llava_swap.profiles.profile_agreement`; the export uses the
tokenizer builder to rebuild the run's tokenizer.
"""

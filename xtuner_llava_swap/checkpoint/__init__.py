"""The checkpoint room: what an xtuner LLaVA run leaves on disk, read safely and lazily.

:mod:`.checkpoint_files` loads a file with ``weights_only=True`` and the explicit allowlist
of the classes xtuner, mmengine and DeepSpeed store (:func:`~.checkpoint_files.safe_load`),
and defines what a reader hands back (:class:`~.checkpoint_files.TrainedCheckpoint`,
:class:`~.checkpoint_files.LoraSpec`); :mod:`.readers` reads every form a run leaves
(``iter_N.pth`` file, ``pth_to_hf`` folder) and base model folders tensor by tensor;
:mod:`.deepspeed_reader` rebuilds fp32 tensors from DeepSpeed ZeRO-1/2/3 directories of
any number of ranks; :mod:`.pages` gives back the memory of file-mapped tensors once used.

The export (:mod:`xtuner_llava_swap.export`) and ``swap_vision_tower`` (the projector
width check) read checkpoints through this room; it imports neither of them, nor the data
pipeline or the training components (``tests/foundation/test_import_graph.py``).
"""

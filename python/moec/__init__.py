"""Python side of moec: model export, presets and golden-data generation.

The C++ compiler consumes ONNX files; this package produces them from the stock
Hugging Face ``transformers.MixtralForCausalLM`` and writes the reference data
the compiler's tests compare against.

Modules:

* :mod:`moec.presets` -- named ``MixtralConfig`` presets (mirrored as JSON in
  ``moec/configs/*.json`` for the C++ side) and config loading.
* :mod:`moec.model` -- the PyTorch model as exported (logits-only Mixtral,
  the fused sparse-MoE custom op, weights-free construction).
* :mod:`moec.export` -- ``python -m moec.export``: Mixtral to ONNX in one of
  three forms (``ort``, ``batched_mm``, ``grouped_mm``).
* :mod:`moec.golden` -- ``python -m moec.golden``: regenerates the fixtures
  under ``test/Inputs/tiny/``.
* :mod:`moec.inspect_onnx` -- ``python -m moec.inspect_onnx``: prints an ONNX
  graph node by node with shapes.
* :mod:`moec.check_ort` -- compares a ``moec run`` output with onnxruntime.
* :mod:`moec.make_invalid_models` -- writes the broken models the importer's
  error tests use (``test/Inputs/invalid``).
* :mod:`moec.init` -- ``delayed_param``: the counter-based parameter
  initialisation, the same as the C++ ``ParamInit.h``.
* :mod:`moec.train_reference` -- the PyTorch reference training step (all four
  load-balancing modes) and the goldens in ``test/Inputs/train``.
* :mod:`moec.check_train` -- compares a ``moec train --dump`` with a golden.
* :mod:`moec.data` -- tokenises Debian's fortunes into token-block files.
* :mod:`moec.plot_loss` -- draws a training-metrics CSV.
* :mod:`moec.atomic` -- atomic file writes.
* :mod:`moec.check_init` -- checks parameters a compiled ``init_params`` wrote.
* :mod:`moec.bench` -- ``python -m moec.bench``: the one-GPU training
  benchmark, PyTorch contenders and a compiled program interleaved over rounds.
* :mod:`moec.torchtitan_mixtral` -- torchtitan's Qwen3 MoE classes configured
  as Mixtral, the benchmark's ``titan-*`` contenders.

Run them with ``PYTHONPATH=python`` from the repository root.
"""

"""Deploy what was trained: a policy as one ONNX (or TorchScript) file, its outputs checked against SB3.

One module per job: :mod:`.graph` (what goes into the file), :mod:`.writers` (the three formats, written atomically),
:mod:`.verification` (the file against SB3), :mod:`.runtimes` (:class:`OnnxPolicy`, :class:`ExecuTorchPolicy`); the
command is rlvision.commands.export.

    rlvision export runs/train/ppo_.../model.zip --format onnx --out policy.onnx          (or python -m rlvision.export)
    rlvision export model.zip --format onnx --out policy.onnx --with-value --obs-from SyntheticPixel-v0
    rlvision export policy.onnx --check-only --zip model.zip                            (re-verify a written file)

The exported graph takes what the env returns (uint8 channel-first frames, as SB3 stores them, or one input per key
of a Dict space), does what SB3's policy does before acting (the division by 255, the SR stage, ImageNet
normalisation, a frozen encoder) and returns the deterministic action, as ``model.predict(obs, deterministic=True)``
returns it (continuous actions unscaled or clipped to the action space). Options: ``with_value`` adds the critic's
value (actor-critic algorithms), ``logits`` the distribution's parameters. BatchNorm is folded into the convolutions
(the rollout inference copy's folding), training-only stages (augmentation) are not in the graph, the batch
dimension is dynamic unless ``batch`` fixes it.

Covered: PPO, A2C, GraphedPPO, TRPO (Discrete, Box, MultiDiscrete actions), MaskablePPO (the action mask is a second
input, ``action_mask``, bool (B, n)), RecurrentPPO (inputs ``state_h``, ``state_c`` (layers, B, hidden) and
``episode_start`` (B,), outputs ``state_h_out``, ``state_c_out``: the actor's LSTM state, reset where an episode
starts, as SB3 does), SAC, TD3, TQC, CrossQ (the actor), DQN and QR-DQN (the greedy action).

Formats: ONNX (``.onnx``, torch.onnx's dynamo exporter), TorchScript (``.pt``) and ExecuTorch (``.pte``: the
graph lowered to XNNPACK, or to ExecuTorch's portable kernels where XNNPACK's do not reproduce the policy (ResT),
with a fixed batch, 1 unless ``batch`` says otherwise: ExecuTorch 1.5.1 plans a dynamic batch's input memory too
small; a ``.pte.json`` next to it names the inputs and outputs; larger batches are run in chunks).

After writing, the file is run (onnxruntime for ONNX, torch for TorchScript, ExecuTorch's Python runtime for
``.pte``) on ``n_check`` observations drawn from the observation space (or from an env,
``obs_from``) and compared with the SB3 model: the max difference of every output and the action agreement are
printed; a mismatch raises :class:`ExportMismatchError` with the numbers and the file is removed. :class:`OnnxPolicy`
and :class:`ExecuTorchPolicy` run an exported file with SB3's ``predict`` signature, so SB3's ``evaluate_policy``
takes them directly. Needs ``pip install 'rlvision[export]'`` (onnx, onnxruntime, onnxscript); ExecuTorch needs
``pip install 'rlvision[executorch]'`` (executorch 1.5.1, checked with rlvision's torch 2.13; it pulls torchao,
coremltools and scikit-learn, hence its own extra).
"""

from .graph import SUPPORTED
from .runtimes import ExecuTorchPolicy, OnnxPolicy
from .verification import (EXTENSIONS, FORMATS, ExportMismatch, ExportMismatchError, ExportReport,
                           file_output_names, verify)
from .writers import export_policy

__all__ = ["SUPPORTED", "FORMATS", "EXTENSIONS", "ExportMismatchError", "ExportMismatch", "ExportReport",
           "export_policy", "verify", "file_output_names", "OnnxPolicy", "ExecuTorchPolicy"]

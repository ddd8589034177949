"""One layout decision (docs/scale.md#layout): for a program of R runs on 8 forced CPU devices,
the memory floor it is checked against, the plan, the out-of-memory message and the width the
round is compiled for all come from `layout.decide_layout`, so they agree. The cases are ones
the earlier code sized per run over all devices, and so got wrong: R = 2 on 8 devices (4
devices along clients, so a wider default width), and R = 3 (three runs per device, so auto
narrows where one run alone would fit). An accelerator's default width (the per-device
cohort) is faked with `layout.on_cpu`; the device count needs a fresh process."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r'''
import json, sys
from fedln_jax.config import Config
from fedln_jax.errors import OutOfMemory
from fedln_jax.training import experiment, layout, memory, plan, program, train

layout.on_cpu = lambda: False   # an accelerator's default width: the whole per-device cohort
TINY = dict(dataset="synthetic", num_clients=32, classes_per_client=3, local_steps=1,
            batch_size=4, rounds=2, eval_every=1)
configs = lambda runs: [Config(**TINY, seed=s).validate() for s in range(runs)]
out = {}

two = experiment.build_experiments(configs(2))
built = program.build_program(two, layout.mesh_devices(two[0].config))
p = plan.program_plan(two)
out["two"] = dict(alone=two[0].spec.chunk_size, compiled=built.spec.chunk_size,
                  layout=built.layout.chunk, mesh=list(built.mesh.devices.shape),
                  plan=p["client_chunk_size"], plan_floor=p["floor"], floor=built.layout.floor._asdict())

three = experiment.build_experiments(configs(3))
one = three[0].floor
fits_two = one.data + 3 * (one.state + 2 * one.per_client) + one.per_client // 2
layout.device_capacity = lambda device: (int(fits_two / memory.AUTO_CHUNK_MARGIN), "faked")
alone = experiment.build_experiment(configs(1)[0])
built = program.build_program(three, layout.mesh_devices(three[0].config))
p = plan.program_plan(three)

def out_of_memory(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: faked")
train._train_loop = out_of_memory
try:
    train.run_group(configs(3), [f"{sys.argv[1]}/seed{s}" for s in range(3)], quiet=True)
    message = None
except OutOfMemory as exc:
    message = str(exc)
out["three"] = dict(alone=alone.spec.chunk_size, compiled=built.spec.chunk_size,
                    layout=built.layout.chunk, narrowed_from=built.layout.narrowed_from,
                    plan=p["client_chunk_size"], plan_floor=p["floor"],
                    floor=built.layout.floor._asdict(), message=message)
print(json.dumps(out))
'''


def test_floor_plan_message_and_compiled_width_agree_for_r_runs_on_eight_devices(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, FEDLN_JAX_CACHE_DIR="off",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    two = out["two"]   # 2 runs: 2 devices along runs x 4 along clients -> 32 / 4 = 8 lanes
    assert two["mesh"] == [2, 4] and two["alone"] == 4
    assert two["compiled"] == two["layout"] == two["plan"] == two["floor"]["chunk"] == 8
    assert two["plan_floor"] == two["floor"] and two["floor"]["runs"] == 1

    three = out["three"]   # 3 runs all on every device (gcd(3, 8) = 1): 3 runs x 4 lanes
    assert three["narrowed_from"] == 4 and three["alone"] == 4   # one run alone fits at 4
    assert three["compiled"] == three["layout"] == three["plan"] == three["floor"]["chunk"] == 2
    assert three["plan_floor"] == three["floor"] and three["floor"]["runs"] == 3
    assert three["message"].startswith("out of memory while training (RESOURCE_EXHAUSTED")
    assert "lower client_chunk_size (now 2;" in three["message"]

"""The one training loop: config -> mesh -> data -> sharded state -> jitted step ->
metrics/checkpoints.

Stage specifics live in a task (psvae_jax/train/tasks); this file knows only its interface,
`tasks.Task`. `train_and_evaluate` reads top-down: `setup` (mesh, task, optimizer, shardings,
constants), `restore_or_init`, then `train_steps` (`compile_step` on the first step, then
`log_train_metrics`, `run_eval` and `save_checkpoint` when due, and preemption), then the
task's `finish`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath

from psvae_jax import checkpoint
from psvae_jax import writers
from psvae_jax import parallel
from psvae_jax import paths
from psvae_jax import runtime
from psvae_jax.data import pipeline
from psvae_jax.data import provenance
from psvae_jax.train import optim
from psvae_jax.train import preflight
from psvae_jax.train import tasks
from psvae_jax.train.state import TrainState, ema_decay, update_ema
from psvae_jax import workdir as workdir_lib


class _Preemption:
  """Decides, at each step boundary, whether to save and stop (SIGTERM or a preemption notice).

  One process: a Python SIGTERM handler sets a flag. Several processes: jax.distributed's
  preemption sync manager owns SIGTERM (on any process, including the TPU maintenance
  notice) and `reached_preemption_sync_point(step)` returns True on every process at the
  same step, so all of them save that step together. Without that service the flag is
  all-gathered every step instead.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._service = False

  def __enter__(self):

    self._service = jax.process_count() > 1 and runtime.preemption_service_active()
    if self._service:  # its C++ SIGTERM handler must stay installed
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving at the next step boundary.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if self._service:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return bool(multihost_utils.reached_preemption_sync_point(step))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      flags_ = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
      return bool(np.any(flags_))
    return self.requested


def create_train_state(rng, *, task: tasks.Task, tx) -> TrainState:
  params, frozen = task.init(rng)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params),
      frozen=frozen,
      skipped=jnp.zeros((), jnp.int32),
  )


def reset_params(state: TrainState, params, *, task: tasks.Task) -> TrainState:
  """Replaces params (e.g. a warm start); EMA and frozen copies follow."""
  return state.replace(
      params=jax.tree.map(jnp.copy, params),
      ema_params=jax.tree.map(jnp.copy, params),
      frozen=task.make_frozen(params),
  )


def train_step(
    state: TrainState, batch, consts, *, task: tasks.Task, tx, config
) -> tuple[TrainState, dict]:
  """One optimizer step; a non-finite loss or gradient leaves the state unchanged (counted)."""
  rng = jax.random.fold_in(jax.random.key(config.seed + 1), state.step)
  grad_fn = jax.value_and_grad(task.loss, has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, state.frozen, consts, batch, rng, state.step)
  if config.get("inject_nonfinite_steps"):  # a fault drill: poison this step's gradients
    bad = jnp.isin(state.step + 1, jnp.asarray(config.inject_nonfinite_steps, jnp.int32))
    grads = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, g), grads)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = update_ema(state.ema_params, params, ema_decay(state.step, config.ema_decay))
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      ema_params=keep(ema, state.ema_params),
      skipped=state.skipped + (~ok).astype(jnp.int32),
  )
  metrics.update(grad_norm=grad_norm, nonfinite=(~ok).astype(jnp.float32))
  return state, metrics


def due(step: int, every: int) -> bool:
  """True at multiples of `every`; `every` <= 0 means never (log_every/eval_every/ckpt_every=0)."""
  return every > 0 and step % every == 0


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run is built from, before any state exists."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: jax.sharding.Mesh
  task: tasks.Task
  tx: optax.GradientTransformation
  abstract: TrainState  # jax.ShapeDtypeStruct leaves
  shardings: TrainState  # jax.sharding.Sharding leaves
  consts: Any  # the task's constants, placed on the mesh

  @property
  def init_fn(self):
    """rng -> a fresh TrainState (pure: traced by eval_shape and jit)."""
    return functools.partial(create_train_state, task=self.task, tx=self.tx)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Checks the config, makes the workdir, mesh, task, optimizer, state shardings, constants."""
  preflight.check(config)  # before the workdir exists: a config that cannot run refuses here
  try:
    data = provenance.describe_splits(config.data)  # the data can be read, the splits agree
  except (ValueError, FileNotFoundError) as e:
    raise preflight.ConfigError(f"--config.data: {e}") from None
  preflight.resolve_classes(config, data["class_names"])
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  record_data(workdir, data)
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  parallel.check_batch_divides_mesh(config.batch_size, mesh)
  logging.info(
      "Mesh %s over %d devices, %d processes.", dict(mesh.shape), mesh.size, jax.process_count()
  )
  task = tasks.get_task(config, mesh, str(workdir))
  if jax.process_index() == 0:  # after get_task, which may resolve config fields
    (workdir / workdir_lib.CONFIG).write_text(config.to_json_best_effort(indent=2))
    paths.record(config, str(workdir))  # the runs it points at, relative to it (moved folders)
  tx = make_tx(task, config)
  abstract = jax.eval_shape(
      functools.partial(create_train_state, task=task, tx=tx), jax.random.key(config.seed)
  )
  shardings = parallel.param_shardings(abstract, mesh, min_size=config.shard_min_size)
  consts = task.constants()
  consts = jax.device_put(
      consts, parallel.param_shardings(consts, mesh, min_size=config.shard_min_size)
  )
  parallel.log_replication_report(abstract, shardings, min_size=config.shard_min_size)
  parallel.log_replication_report(consts, min_size=config.shard_min_size, what="constant")
  return Setup(config, workdir, mesh, task, tx, abstract, shardings, consts)


def make_tx(task: tasks.Task, config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The production optimizer (config.optim over config.num_train_steps) on the task's
  parameter groups."""
  return optim.make_optimizer(
      config.optim,
      config.num_train_steps,
      functools.partial(optim.label_params, groups=task.param_groups),
      players=getattr(task, "players", None),
  )


def record_data(workdir: epath.Path, data: dict) -> None:
  """Writes DIR/data.json (the splits' sizes, fingerprints, class names) at a run's start; a
  resumed run must read the same records (`provenance.check_recorded`)."""
  path = workdir / workdir_lib.DATA
  if path.exists():
    provenance.check_recorded(json.loads(path.read_text()), data, str(workdir))
  elif jax.process_index() == 0:
    path.write_text(json.dumps(data, indent=2))


def restore_or_init(s: Setup, ckpt: checkpoint.Checkpointer, train_iter) -> TrainState:
  """The latest checkpoint's state (and data position), else a fresh, warm-started one."""
  steps = ckpt.finalized_steps()
  if steps:
    target = parallel.with_shardings(s.abstract, s.shardings)
    step, (state, data_state) = checkpoint.newest_restorable(
        steps, lambda step: ckpt.restore(step, target), f"{s.workdir}/checkpoints", ckpt.set_aside
    )
    logging.info("Resuming from %s/checkpoints/%d", s.workdir, step)
    if data_state:
      train_iter.set_state(data_state)
    return state
  state = jax.jit(s.init_fn, out_shardings=s.shardings)(jax.random.key(s.config.seed))
  warm = s.task.warm_start(state.params)
  if warm is not None:
    state = jax.jit(
        functools.partial(reset_params, task=s.task), out_shardings=s.shardings, donate_argnums=0
    )(state, warm)
  return state


def jit_train_step(task: tasks.Task, tx, config, shardings: TrainState, mesh):
  """The train step as the loop jits it (state donated, sharded as `shardings`; metrics
  replicated): `compile_step` runs it, `psvae_jax.aot` compiles it for a TPU topology."""
  return jax.jit(
      functools.partial(train_step, task=task, tx=tx, config=config),
      out_shardings=(shardings, parallel.replicated(mesh)),
      donate_argnums=0,
  )


def compile_step(s: Setup, state: TrainState, batch, writer, step: int):
  """train_step compiled ahead of time for these shapes, once; logs perf/ scalars at `step`."""
  step_fn = jit_train_step(s.task, s.tx, s.config, s.shardings, s.mesh)
  t0 = time.time()
  compiled = step_fn.lower(state, batch, s.consts).compile()
  logging.info("Compiled train step in %.1f s.", time.time() - t0)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  writer.write_scalars(
      step, {"perf/compile_seconds": time.time() - t0, "perf/gflops_per_step": flops / 1e9}
  )
  return compiled


def log_train_metrics(
    step: int, pending: list[dict], state: TrainState, train_iter, writer, extra=None
) -> int:
  """Writes the mean of the pending steps' metrics (and counters, and `extra` scalars such as
  train/lr and perf/eta_seconds); returns the skipped steps."""
  host = jax.device_get(pending)
  scalars = {f"train/{k}": float(np.mean([h[k] for h in host])) for k in host[0]}
  scalars.update(extra or {})
  skipped = int(jax.device_get(state.skipped))
  scalars["train/skipped_steps"] = skipped
  if hasattr(train_iter, "counters"):  # skipped / repaired input records, by kind
    scalars.update({f"data/{k}": v for k, v in train_iter.counters().items()})
  writer.write_scalars(step, scalars)
  # The log line: losses and rates; data counters (and skipped_steps) only once they are non-zero
  # (TensorBoard keeps them all).
  shown = {k: v for k, v in scalars.items() if not (k.startswith("data/") or "skipped" in k) or v}
  logging.info(
      "step %d: %s", step, " ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in shown.items())
  )
  return skipped


def run_eval(s: Setup, state: TrainState, step: int, writer) -> dict[str, float]:
  """The task's evaluation: scalars and images to the writer, PNGs, DIR/metrics.json and a line
  of DIR/eval_history.jsonl."""
  scalars, images = s.task.evaluate(state, s.consts, s.mesh, step)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in scalars.items()})
  writer.write_images(step, {f"eval/{k}": v[None] for k, v in images.items()})
  notes = dict(s.task.grid_notes or {})  # what made each grid (prompts, labels)
  if notes:
    writer.write_texts(step, {f"eval/{k}_prompts": v for k, v in notes.items() if k in images})
  if jax.process_index() == 0:
    for k, v in images.items():
      writers.save_png(str(s.workdir / workdir_lib.SAMPLES / f"{k}_{step:07d}.png"), v)
      if k in notes:
        (s.workdir / workdir_lib.SAMPLES / f"{k}_{step:07d}.txt").write_text(notes[k] + "\n")
  writers.write_metrics_json(str(s.workdir), scalars)
  writers.append_eval_history(str(s.workdir), step, scalars)
  logging.info("eval step %d: %s", step, json.dumps({k: round(v, 4) for k, v in scalars.items()}))
  return scalars


def save_checkpoint(
    s: Setup, ckpt: checkpoint.Checkpointer, step: int, state: TrainState, train_iter
) -> None:
  ckpt.save(step, state, data_state=train_iter.get_state(), config=s.config.to_dict())


def stop_if_diverged(
    s: Setup, ckpt: checkpoint.Checkpointer, step: int, state: TrainState, train_iter, skipped: int
) -> None:
  """More than max_skipped_steps non-finite steps: saves this step and raises."""
  if skipped <= s.config.max_skipped_steps:
    return
  save_checkpoint(s, ckpt, step, state, train_iter)
  ckpt.close()
  raise FloatingPointError(
      f"{skipped} steps had a non-finite loss or gradient (max_skipped_steps="
      f"{s.config.max_skipped_steps}); stopped at step {step}. Lower the learning rate "
      "or check the data."
  )


def train_steps(
    s: Setup,
    state: TrainState,
    train_iter,
    ckpt: checkpoint.Checkpointer,
    writer,
    preemption: _Preemption,
) -> tuple[TrainState, dict[str, Any], int | None]:
  """Steps state.step + 1 .. num_train_steps, logging, evaluating and saving when due.

  Returns (state, the last eval's metrics or {}, the step it was preempted at or None). The
  last step is always logged and saved, and evaluated unless eval_every=0.
  """
  config = s.config
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top  (imports TF)

  progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every or None
  )
  start, last = int(jax.device_get(state.step)), config.num_train_steps
  final: dict[str, Any] = {}
  pending: list[dict] = []
  step_fn = None
  for step in range(start + 1, last + 1):
    batch = parallel.to_global(next(train_iter), s.mesh)
    if step_fn is None:  # the first step: compile once, reuse
      step_fn = compile_step(s, state, batch, writer, step)
    state, m = step_fn(state, batch, s.consts)
    if config.log_every > 0 or step == last:  # log_every=0: only the last step is logged
      pending.append(m)
    progress(step)
    if step == start + 1:
      t_first = time.time()  # after the first step (its compile): the rate for the ETA
    if due(step, config.log_every) or step == last:
      extra = {
          f"train/{k}": v
          for k, v in optim.learning_rates(config.optim, config.num_train_steps, step - 1).items()
      }
      if step > start + 1:
        extra["perf/eta_seconds"] = (last - step) * (time.time() - t_first) / (step - start - 1)
      skipped = log_train_metrics(step, pending, state, train_iter, writer, extra)
      pending = []
      stop_if_diverged(s, ckpt, step, state, train_iter, skipped)
    if due(step, config.eval_every) or (step == last and config.eval_every > 0):
      final = run_eval(s, state, step, writer)  # eval_every=0: never, not even at the end
    saved = due(step, config.ckpt_every) or step == last  # the last step is always saved
    if saved:
      save_checkpoint(s, ckpt, step, state, train_iter)
    if preemption.should_stop(step):
      if not saved:  # (the last step is saved above: saving it twice raises in Orbax)
        save_checkpoint(s, ckpt, step, state, train_iter)
      logging.warning(
          "Preempted: saved step %d (process %d of %d), exiting.",
          step,
          jax.process_index(),
          jax.process_count(),
      )
      return state, final, step
  return state, final, None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains config.stage in workdir (resuming if it has checkpoints); returns final eval metrics.

  A preempted run returns {"preempted_at": step} after saving that step.
  """
  s = setup(config, workdir)
  train_iter = pipeline.build_train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed
  )
  ckpt = checkpoint.Checkpointer(
      str(s.workdir / workdir_lib.CHECKPOINTS),
      max_to_keep=config.keep_checkpoints,
      async_save=config.async_checkpoint,
  )
  state = restore_or_init(s, ckpt, train_iter)
  writer = writers.create_writer(str(s.workdir))
  start = int(jax.device_get(state.step))
  with _Preemption() as preemption:
    state, final, preempted_at = train_steps(s, state, train_iter, ckpt, writer, preemption)
    if preempted_at is not None:
      ckpt.close()
      writer.flush()
      return {"preempted_at": preempted_at}
  if start >= config.num_train_steps and config.eval_every > 0:
    final = run_eval(s, state, start, writer)  # a finished run re-evaluates its last state
  s.task.finish(state, s.consts, s.mesh, str(s.workdir), train_iter)
  ckpt.close()
  writer.flush()
  return final

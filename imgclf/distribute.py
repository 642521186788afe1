"""Training on several devices or machines with tf.distribute (`imgclf train --distribute`).

Every worker runs the same command line; TensorFlow's `TF_CONFIG` variable tells each one the cluster
and its own place in it. This module:

- parses and checks `TF_CONFIG` before TensorFlow starts (malformed JSON, a task index outside the
  cluster, this worker's port already in use: one-line errors, never a traceback or a hang),
- chooses the strategy for --distribute auto|none|mirrored|multi-worker and creates it, with the
  cluster's coordination service bounded by --cluster-timeout (a worker that never shows up, or one
  that dies mid-run, fails the run within that time instead of hanging it),
- compares the dataset fingerprint of every worker at start-up,
- gives each worker its workspace: the chief (worker 0) writes to the registry; the other workers
  write only to a temporary folder of their own, removed when the run ends,
- makes Keras 3's `model.fit` work under MultiWorkerMirroredStrategy (keras-team/keras issue 20585,
  see `fitting`); tests/test_distribute.py trains two real workers through it, so a Keras upgrade
  that breaks the workaround fails there,
- turns a lost worker into a one-line error that names it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional

from imgclf.config import DISTRIBUTE_MODE
from imgclf.errors import ClusterError, ImgclfError, UsageError

TF_CONFIG = "TF_CONFIG"
#: seconds a worker may be silent (not started yet, or dead) before the others give up
DEFAULT_CLUSTER_TIMEOUT = 60
#: the job names imgclf trains with; a parameter-server cluster ("ps", "evaluator") is not supported
TRAINING_JOBS = ("chief", "worker")
#: a non-chief worker's own temporary folder: SCRATCH_PREFIX + its pid + "-" + random
SCRATCH_PREFIX = "imgclf-worker-"


class Mode(str, Enum):
    auto = "auto"
    none = "none"
    mirrored = "mirrored"
    multi_worker = "multi-worker"


#: the --distribute choices
MODES = tuple(m.value for m in Mode)


# --------------------------------------------------------------------------------------- TF_CONFIG
@dataclass
class ClusterSpec:
    """A parsed TF_CONFIG: the training tasks in order (chief first) and this process's place."""

    tasks: List[str]                 # "chief:0", "worker:0", ... in TensorFlow's replica order
    addresses: List[str]             # "host:port" of each task
    task_type: str
    task_index: int
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def me(self) -> int:
        return self.tasks.index(f"{self.task_type}:{self.task_index}")

    @property
    def is_chief(self) -> bool:
        return self.me == 0

    @property
    def size(self) -> int:
        return len(self.tasks)

    def name(self, i: int) -> str:
        return f"{self.tasks[i].replace(':', ' ')} ({self.addresses[i]})"


def parse_tf_config(text: Optional[str]) -> Optional[ClusterSpec]:
    """The cluster TF_CONFIG describes, or None when it is unset or empty. Raises UsageError."""
    if text is None or not text.strip():
        return None
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{TF_CONFIG}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict) or not cfg["cluster"]:
        raise UsageError(f'{TF_CONFIG}: expected {{"cluster": {{"worker": ["host:port", ...]}}, '
                         f'"task": {{"type": "worker", "index": N}}}}')
    cluster, task = cfg["cluster"], cfg.get("task")
    other = sorted(set(cluster) - set(TRAINING_JOBS))
    if other:
        raise UsageError(f"{TF_CONFIG}: job {other[0]!r} is not supported (imgclf trains with "
                         f"MultiWorkerMirroredStrategy: only 'chief' and 'worker' tasks)")
    tasks, addresses = [], []
    for job in TRAINING_JOBS:
        hosts = cluster.get(job, [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise UsageError(f"{TF_CONFIG}: cluster.{job} must be a list of \"host:port\" strings")
        if job == "chief" and len(hosts) > 1:
            raise UsageError(f"{TF_CONFIG}: at most one chief, got {len(hosts)}")
        for i, h in enumerate(hosts):
            _check_address(h, f"cluster.{job}[{i}]")
            tasks.append(f"{job}:{i}")
            addresses.append(h)
    if len(set(addresses)) != len(addresses):
        dup = next(a for a in addresses if addresses.count(a) > 1)
        raise UsageError(f"{TF_CONFIG}: address {dup} is given to two tasks")
    if not tasks:
        raise UsageError(f"{TF_CONFIG}: the cluster lists no workers")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UsageError(f'{TF_CONFIG}: "task" must say which task this is, e.g. {{"type": "worker", "index": 0}}')
    ttype, index = task["type"], task["index"]
    if ttype not in TRAINING_JOBS or ttype not in cluster:
        raise UsageError(f"{TF_CONFIG}: task type {ttype!r} is not a job of the cluster "
                         f"({', '.join(j for j in TRAINING_JOBS if j in cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not (0 <= index < len(cluster[ttype])):
        raise UsageError(f"{TF_CONFIG}: task index {index!r} is outside the cluster: {ttype} has "
                         f"{len(cluster[ttype])} task(s), indices 0-{len(cluster[ttype]) - 1}")
    return ClusterSpec(tasks, addresses, ttype, index, cfg)


def _check_address(addr: str, where: str) -> None:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not (1 <= int(port) <= 65535):
        raise UsageError(f"{TF_CONFIG}: {where} {addr!r} is not host:port")


def check_port_free(cluster: ClusterSpec) -> None:
    """TensorFlow's server listens on every interface at this task's port; one in use fails the start
    with a C++ error, or waits: say so first, naming the port."""
    port = int(cluster.addresses[cluster.me].rpartition(":")[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a socket in TIME_WAIT is no conflict
        s.bind(("", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ClusterError(f"{TF_CONFIG}: port {port} of this task ({cluster.name(cluster.me)}) is already "
                               f"in use by another process") from None
        raise ClusterError(f"{TF_CONFIG}: cannot listen on port {port} for {cluster.name(cluster.me)}: "
                           f"{e.strerror}") from None
    finally:
        s.close()


# ----------------------------------------------------------------------------------------- the plan
@dataclass
class Distribution:
    """The strategy a training run uses, and where this process may write."""

    mode: str                              # none | mirrored | multi-worker (auto resolved)
    strategy: object = None                # a tf.distribute.Strategy, None for mode none
    cluster: Optional[ClusterSpec] = None
    timeout: int = DEFAULT_CLUSTER_TIMEOUT
    scratch: Optional[Path] = None         # a non-chief's own temporary folder

    @property
    def name(self) -> str:
        return {Mode.mirrored.value: "MirroredStrategy", Mode.multi_worker.value: "MultiWorkerMirroredStrategy"
                }.get(self.mode, "none")

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync) if self.strategy is not None else 1

    @property
    def workers(self) -> int:
        return self.cluster.size if self.mode == Mode.multi_worker.value and self.cluster else 1

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.mode != Mode.multi_worker.value or self.cluster.is_chief

    @property
    def steps_per_execution(self) -> int:
        """Optimizer steps per call of Keras' compiled train function: several under a strategy, where each
        call pays a Python round trip, a pull of the logs from every replica and the callbacks' hooks
        (bench/distributed_profile.py); one in a single process, where that cost is small."""
        from imgclf.config import DISTRIBUTED_STEPS_PER_EXECUTION

        return DISTRIBUTED_STEPS_PER_EXECUTION if self.replicas > 1 else 1

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def describe(self, per_replica: int) -> dict:
        """What metadata.json records."""
        out = {"strategy": self.name, "replicas": self.replicas, "workers": self.workers,
               "per_replica_batch_size": per_replica, "global_batch_size": self.global_batch(per_replica)}
        if self.workers > 1:
            out["cluster"] = list(self.cluster.addresses)
        return out

    def summary(self, per_replica: int) -> str:
        where = f", {self.workers} workers, this is {self.cluster.name(self.cluster.me)}" if self.workers > 1 else ""
        return (f"strategy {self.name}: {self.replicas} replica(s){where}; batch {per_replica} per replica, "
                f"global batch {self.global_batch(per_replica)}")

    # -- scopes
    def scope(self):
        """Variables (the model, the optimizer) are made in here."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def fitting(self, model):
        """model.compile/fit/evaluate/save under the strategy.

        Keras 3 (3.15, keras-team/keras issue 20585) breaks `fit` under MultiWorkerMirroredStrategy in
        two places of keras/src/backend/tensorflow/trainer.py (TRAPS.md):
          1. `_maybe_symbolic_build` reduces the first PerReplica batch with strategy.reduce and fails;
             it is skipped when the model holds no strategy of its own and fit runs inside the scope;
          2. `reduce_per_replica(..., "auto")` becomes strategy.reduce("MEAN", v, axis=0) on the scalar
             step logs and fails; those logs are this worker's running metrics, so we take the first
             local replica's value ("first"). The epoch logs that callbacks and history.csv see are
             read afterwards from the metrics' sync-on-read variables, which sums them over every
             replica of every worker: they are global, and the same on every worker.
        """
        if self.mode != Mode.multi_worker.value:
            with self.scope():
                yield
            return
        trainer = _keras_trainer()
        original = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction == "auto" and trainer._collective_all_reduce_multi_worker(strategy):
                reduction = "first"
            return original(values, strategy, reduction)

        model._distribute_strategy = None
        trainer.reduce_per_replica = reduce_per_replica
        try:
            with self.strategy.scope():
                yield
        finally:
            trainer.reduce_per_replica = original

    @contextlib.contextmanager
    def synchronized_batchnorm(self, model):
        """While training on several replicas, every BatchNormalization layer normalises with the mean and
        variance of the whole global batch (Keras' `synchronized=True`: an all-reduce of their sums), so
        its batch statistics and moving averages are those one process computes on the same batch, the
        same on every replica. Reset afterwards: the saved model's layers are the usual ones."""
        from imgclf.config import DISTRIBUTED_SYNC_BATCHNORM

        layers = [l for l in model._flatten_layers(include_self=False, recursive=True)
                  if hasattr(l, "synchronized") and hasattr(l, "moving_mean")]
        if self.replicas <= 1 or not DISTRIBUTED_SYNC_BATCHNORM or not layers:
            yield
            return
        before = [l.synchronized for l in layers]
        for l in layers:
            l.synchronized = True
        try:
            yield
        finally:
            for l, b in zip(layers, before):
                l.synchronized = b

    def steps(self, n: int, batch: int) -> int:
        """Batches an epoch of `n` images in global batches of `batch` takes: under a strategy a last batch
        smaller than the replica count is left out (see `dataset`)."""
        steps = -(-n // batch)
        return steps - 1 if self.strategy is not None and 0 < n % batch < self.replicas else steps

    def dataset(self, build):
        """The dataset `build(shard)` makes (a tf.data pipeline of batches of the global batch size, see
        data.pipeline.make_dataset), spread over the replicas. Every worker draws the same order of
        indices as one process (same seed) and cuts each global batch into one even slice per replica;
        `shard` keeps this worker's slices, so a worker gathers, augments and feeds only its own share
        (tf.distribute's auto-sharding would have each worker prepare every global batch and keep its
        part). A last batch smaller than the replica count is left out (no replica gets an empty one)."""
        if self.strategy is None:
            return build(None)
        import tensorflow as tf

        replicas = self.replicas

        def per_worker(ctx):
            local = replicas // ctx.num_input_pipelines
            first = ctx.input_pipeline_id * local

            def shard(idx, n, batch):
                def slices(i):
                    size = tf.cast(tf.shape(i)[0], tf.int64)
                    return tf.data.Dataset.range(first, first + local).map(
                        lambda r: i[size * r // replicas:size * (r + 1) // replicas])

                steps = self.steps(n, batch)
                idx = idx.take(steps)  # all the batches but a last one too small to share
                # a known length: Keras counts the steps of an epoch (and needs it for steps_per_execution)
                return idx.flat_map(slices).apply(tf.data.experimental.assert_cardinality(steps * local))

            return build(shard)

        return self.strategy.distribute_datasets_from_function(per_worker)

    # -- workspace
    def workspace(self, root: Path, resume: Optional[str]) -> Path:
        """The registry root this process writes to: the real one for the chief; for any other worker
        a temporary folder of its own (with a copy of the run it resumes, read from the shared
        registry), removed by `close`."""
        if self.is_chief:
            return root
        from imgclf import registry

        _remove_stale_scratch(registry.pid_alive)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        if resume:
            src = root / registry.STAGING / resume
            if not (src / "run.json").is_file():
                self.close()
                raise UsageError(f"no unfinished run {resume!r} in {root} (every worker needs the chief's "
                                 f"registry on a shared filesystem to resume)")
            dest = self.scratch / registry.STAGING / resume
            shutil.copytree(src, dest)
            info = registry.read_json(dest / "run.json")
            info["pid"] = os.getpid()   # the chief's live process is not ours: ours resumes our copy
            registry.write_json_atomic(dest / "run.json", info)
        return self.scratch

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    # -- starting
    def start(self) -> "Distribution":
        """Create the strategy. Call it before TensorFlow runs anything else: MultiWorkerMirroredStrategy
        must configure the runtime (collective ops, the cluster's coordination service) first."""
        if self.strategy is not None or self.mode == Mode.none.value:
            return self
        from imgclf.tf_quiet import import_tensorflow

        tf = import_tensorflow()
        if self.mode == Mode.mirrored.value:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
            if not devices:   # no GPU: every logical CPU device (one, unless the process configured more)
                devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            self.strategy = tf.distribute.MirroredStrategy(devices=devices)
            return self
        _keras_trainer()   # an unsupported Keras fails here, before the cluster forms
        cluster, timeout = self.cluster, self.timeout
        if cluster is not None and cluster.size > 1:
            check_port_free(cluster)
            from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
            from tensorflow.python.eager import context

            jobs = [j for j in TRAINING_JOBS if cluster.raw["cluster"].get(j)]
            leader = f"/job:{cluster.tasks[0].split(':')[0]}/replica:0/task:0"
            # bounded waits: for every task to join, for heartbeats (a dead task), and at shutdown
            context.context().configure_coordination_service(
                service_type="standalone", service_leader=leader,
                cluster_register_timeout_in_ms=timeout * 1000, heartbeat_timeout_in_ms=timeout * 1000,
                shutdown_barrier_timeout_in_ms=timeout * 1000,
                coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
                    name=j, num_tasks=len(cluster.raw["cluster"][j])) for j in jobs])
        # TensorFlow waits for missing workers without end (and ignores SIGTERM meanwhile): a watchdog
        # ends this process with a one-line error when the cluster has not formed in time
        watchdog = self._watchdog() if cluster is not None and cluster.size > 1 else None
        try:
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except Exception as e:  # noqa: BLE001 - TensorFlow's start-up errors come in many types
            text = str(e)
            if cluster is not None and any(w in text.lower() for w in ("register", "barrier", "deadline",
                                                                        "unavailable", "timed out")):
                others = [cluster.name(i) for i in range(cluster.size) if i != cluster.me]
                raise ClusterError(f"the cluster did not come together within --cluster-timeout {timeout} s: "
                                   f"waiting for {', '.join(others)} (is every worker started, with the same "
                                   f"{TF_CONFIG} cluster?)") from None
            first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
            where = cluster.name(cluster.me) if cluster else "the worker"
            raise ClusterError(f"{TF_CONFIG}: could not start {where}: {first[:300]}") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        return self

    def _watchdog(self) -> "_Watchdog":
        cluster = self.cluster
        others = [i for i in range(cluster.size) if i != cluster.me]
        return _Watchdog(self.timeout, [cluster.name(i) for i in others], [cluster.addresses[i] for i in others],
                         self.scratch)

    # -- checks and failures
    def check_same_data(self, fingerprint: str, data) -> None:
        """All workers must train on the same files, classes and split: compare fingerprints (12 bytes)."""
        if self.workers < 2:
            return
        import numpy as np
        import tensorflow as tf

        mine = np.frombuffer(bytes.fromhex(fingerprint), dtype=np.uint8).astype(np.int32)
        strategy = self.strategy

        @tf.function
        def gather():
            def fn():
                ctx = tf.distribute.get_replica_context()
                return ctx.all_gather(tf.constant(mine)[None, :], axis=0)
            return strategy.run(fn)

        try:
            seen = strategy.experimental_local_results(gather())[0].numpy()
        except Exception as e:  # noqa: BLE001 - a cluster failure becomes one line
            raise self.translate(e)
        per_worker = max(1, len(seen) // self.workers)
        prints = [bytes(row.astype(np.uint8).tolist()).hex() for row in seen[::per_worker]]
        for i, fp in enumerate(prints):
            if fp != prints[self.cluster.me]:
                raise ClusterError(
                    f"{data}: the workers see different data: {self.cluster.name(self.cluster.me)} has dataset "
                    f"fingerprint {prints[self.cluster.me]}, {self.cluster.name(i)} has {fp}; every worker must "
                    f"read the same DATA (a shared filesystem) with the same options")

    def translate(self, exc: BaseException, resume_hint: str = "") -> BaseException:
        """A TensorFlow cluster failure as a one-line ClusterError naming the lost worker(s)."""
        if self.workers < 2 or isinstance(exc, (ImgclfError, KeyboardInterrupt)):
            return exc
        import tensorflow as tf

        if not isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                                tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError,
                                tf.errors.UnknownError, tf.errors.FailedPreconditionError)):
            return exc
        text = str(exc)
        lost = sorted({self._task_number(t, i) for t, i in re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)",
                                                                        text)} - {None, self.cluster.me})
        low = text.lower()
        cluster_words = ("heartbeat", "unhealthy", "crashed", "connection", "socket closed", "broken pipe",
                         "end of file", "register", "barrier", "collective", "unavailable", "deadline")
        if not lost and not any(w in low for w in cluster_words):
            return exc   # a TensorFlow error of this worker's own, not a lost peer: left as it is
        who = ", ".join(self.cluster.name(i) for i in lost) if lost else "a worker"
        if "heartbeat" in low or "unhealthy" in low or "crashed" in low:
            why = f"stopped responding (no heartbeat within --cluster-timeout {self.timeout} s)"
        elif any(w in low for w in ("connection reset", "socket closed", "connection refused", "failed to connect",
                                    "broken pipe", "end of file")):
            why = "closed its connection (its process ended or was killed)"
        elif "register" in low or "barrier" in low:
            why = f"did not join the cluster within --cluster-timeout {self.timeout} s"
        else:
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            why = f"failed ({first[:200]})"
        _end_quickly_at_exit(ClusterError.exit_code)
        return ClusterError(f"lost {who}: {why}{resume_hint}")

    def resume_hint(self, run, registry_dir=None) -> str:
        """How to finish a run a lost worker interrupted (added to the error)."""
        if self.workers < 2:
            return ""
        if not self.is_chief:
            return "; the chief keeps the run: start every worker again with --resume and the run id the chief names"
        if not run.history():
            return "; no epoch had completed, nothing was kept: start every worker again"
        reg = f" --registry {registry_dir}" if registry_dir else ""
        return (f"; {len(run.history())} completed epoch(s) are kept in {run.staging}: start every worker again "
                f"with `imgclf train --resume {run.id}{reg} --distribute multi-worker`")

    def _task_number(self, job: str, index: str) -> Optional[int]:
        try:
            return self.cluster.tasks.index(f"{job}:{int(index)}")
        except ValueError:
            return None


def _keras_trainer():
    """The Keras module whose `fit` `Distribution.fitting` adjusts; a Keras without those hooks gets a
    clear error instead of a wrong run."""
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError as e:
        raise ClusterError(f"this Keras version cannot train with --distribute multi-worker ({e})") from None
    missing = [n for n in ("reduce_per_replica", "_collective_all_reduce_multi_worker") if not hasattr(trainer, n)]
    if missing:
        import keras
        raise ClusterError(f"keras {keras.__version__} cannot train with --distribute multi-worker: "
                           f"keras.src.backend.tensorflow.trainer lacks {', '.join(missing)}")
    return trainer


class _Watchdog:
    """A tiny helper process (no TensorFlow) that waits `timeout` seconds for `cancel`. While TensorFlow
    waits for the cluster it holds Python's lock (no thread of ours could run) and ignores SIGTERM; if
    the cluster has not formed in time the helper names the missing workers in one error line on our
    stderr, removes our scratch folder and ends this process with SIGKILL."""

    def __init__(self, timeout: int, names: List[str], addresses: List[str], scratch: Optional[Path]):
        import subprocess

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                             env.get("PYTHONPATH", "")])
        args = json.dumps({"pid": os.getpid(), "timeout": timeout, "names": names, "addresses": addresses,
                           "scratch": str(scratch) if scratch else None})
        self.proc = subprocess.Popen([sys.executable, "-c", "from imgclf.distribute import _watchdog_main; "
                                      "_watchdog_main()", args], stdin=subprocess.PIPE, env=env)

    def cancel(self) -> None:
        try:
            self.proc.stdin.close()   # EOF: the cluster formed (or failed with an error of its own)
        except OSError:
            pass
        self.proc.wait()


def _watchdog_main() -> None:
    import select
    import signal

    args = json.loads(sys.argv[1])
    ready, _, _ = select.select([sys.stdin], [], [], args["timeout"])
    if ready:
        return   # cancelled, or our parent ended
    silent = [n for n, a in zip(args["names"], args["addresses"]) if not _listening(a)]
    if silent:
        text = f"{', '.join(silent)} never showed up (nothing listens at its address)"
    else:
        text = (f"{', '.join(args['names'])} did not join this cluster (is {TF_CONFIG}'s cluster the same on "
                f"every worker?)")
    sys.stderr.write(f"error: {TF_CONFIG}: {text} within --cluster-timeout {args['timeout']} s\n")
    sys.stderr.flush()
    if args["scratch"]:
        shutil.rmtree(args["scratch"], ignore_errors=True)
    os.kill(args["pid"], signal.SIGKILL)


def _end_quickly_at_exit(code: int) -> None:
    """After a lost worker TensorFlow's runtime is broken: the interpreter's teardown then printed a
    traceback from a thread pool's __del__ (and may wait on the dead peer). Once the error line is out,
    end the process at exit without that teardown."""
    import atexit

    def end():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    atexit.register(end)


def _remove_stale_scratch(pid_alive) -> None:
    """Scratch folders of earlier non-chief workers whose process was killed (SIGKILL skips `close`)."""
    for p in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = p.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        try:
            mine = p.is_dir() and (not hasattr(os, "getuid") or p.stat().st_uid == os.getuid())
        except OSError:
            continue
        if mine and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def data_fingerprint(file_fingerprint: str, class_names: List[str], counts: List[int], spec: dict) -> str:
    """One 12-byte hex digest of what a worker is about to train on: the files (names and sizes), the
    classes in index order, the split sizes and the preprocessing."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([file_fingerprint, class_names, counts, spec], sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------- scaling to the replicas
def scale_for_replicas(cfg, replicas: int, batch_given: bool, lr_given: bool):
    """The training options fitted to `replicas` replicas (after config.resolve; a resumed run's options
    are all given, so nothing is scaled twice). Returns (a new config, a line saying what changed or "");
    `cfg` is not changed.

    - --batch-size left to its default: the default is the one-process (global) batch, split evenly over
      the replicas, so the run takes the same optimizer steps, with the same learning rate, warm-up and
      schedule, as one process: the same command trains the same model (issue 33: 0.166 -> one process).
    - --batch-size given: it is per replica (TensorFlow's convention), the global batch is `replicas`
      times larger and an epoch has that many times fewer steps; the default learning rate (no --lr)
      grows by sqrt(replicas) (DISTRIBUTED_LR_SCALING, the rule for Adam), a given --lr is kept.
    Warm-up and cosine lengths are counted in optimizer steps of the global batch (train.fit_phase)."""
    from imgclf.config import DISTRIBUTED_LR_SCALING

    from dataclasses import replace

    if replicas <= 1:
        return cfg, ""
    if not batch_given:
        one, per = cfg.batch_size, max(1, cfg.batch_size // replicas)
        return replace(cfg, batch_size=per), (f"batch {one} (the one-process default) split over {replicas} "
                                              f"replicas: {per} per replica, the same steps and learning rate "
                                              "as one process")
    if lr_given or DISTRIBUTED_LR_SCALING == "none":
        return cfg, ""
    factor = replicas ** 0.5 if DISTRIBUTED_LR_SCALING == "sqrt" else float(replicas)
    lr = min(0.5, cfg.lr * factor)
    return replace(cfg, lr=lr), (f"learning rate {cfg.lr:g} x {factor:.3g} = {lr:.3g} for the global batch "
                                 f"{cfg.batch_size * replicas} ({replicas} replicas of --batch-size "
                                 f"{cfg.batch_size}); give --lr to set it")


# ------------------------------------------------------------------------------------ making a plan
def check_timeout(seconds: int) -> int:
    if not (5 <= seconds <= 86400):
        raise UsageError(f"--cluster-timeout must be between 5 and 86400 seconds, got {seconds}")
    return seconds


def resolve_mode(mode: str, cluster: Optional[ClusterSpec], gpus: int) -> str:
    """auto: multi-worker when TF_CONFIG names more than one task, mirrored when more than one GPU is
    visible, else none."""
    mode = Mode(mode).value
    if mode == Mode.auto.value:
        if cluster is not None and cluster.size > 1:
            return Mode.multi_worker.value
        return Mode.mirrored.value if gpus > 1 else Mode.none.value
    if mode == Mode.mirrored.value and cluster is not None and cluster.size > 1:
        raise UsageError(f"--distribute mirrored trains on one machine, but {TF_CONFIG} names {cluster.size} "
                         f"tasks: use --distribute multi-worker (or auto), or unset {TF_CONFIG}")
    return mode


def plan(mode: str = DISTRIBUTE_MODE, cluster_timeout: int = DEFAULT_CLUSTER_TIMEOUT, reporter=None) -> Distribution:
    """The strategy this run will use (TF_CONFIG checked; nothing started yet)."""
    check_timeout(cluster_timeout)
    try:
        mode = Mode(mode).value
    except ValueError:
        raise UsageError(f"--distribute must be one of {', '.join(m.value for m in Mode)}, got {mode!r}") from None
    cluster = parse_tf_config(os.environ.get(TF_CONFIG))
    gpus = 0
    if mode == Mode.auto.value and (cluster is None or cluster.size < 2):
        from imgclf.tf_quiet import import_tensorflow
        gpus = len(import_tensorflow().config.list_physical_devices("GPU"))
    resolved = resolve_mode(mode, cluster, gpus)
    if resolved == Mode.none.value and cluster is not None and cluster.size > 1 and reporter is not None:
        reporter.warn(f"--distribute none: {TF_CONFIG} is ignored, this process trains on its own")
    return Distribution(resolved, cluster=cluster if resolved == Mode.multi_worker.value else None,
                        timeout=cluster_timeout)

# shellcheck shell=bash
# The part train.sbatch and eval.sbatch share: sourced, never run, as `source common.sh NAME`
# (NAME, e.g. train.sbatch, starts every message). It defines
#   fail MESSAGE...        one line "NAME: error: MESSAGE" on stderr, exit 2 (a bad launch);
#   check_gpus_per_node    GPUS_PER_NODE (default: the GPUs visible on this node), or fail;
#   plan_launch            procs_per_node, NUM_PROCESSES, MAIN_HOST, MAIN_PORT and LAUNCH_ARGS
#                          (the `accelerate launch` options), CPU/gloo settings when GPUS_PER_NODE=0;
#   srun_per_node K ARGS   exec srun: one task per node runs `python -m fcn_dist.launcher accelerate
#                          LAUNCH_ARGS --machine_rank <its node> ARGS`, with --kill-on-bad-exit=K.
# It reads NNODES, PYTHON and the Slurm variables; the sbatch scripts document the settings.

FCN_SCRIPT=$1
fail() { echo "$FCN_SCRIPT: error: $*" >&2; exit 2; }

check_gpus_per_node() {
  local gpus_present=0 visible
  if command -v nvidia-smi >/dev/null 2>&1; then
    gpus_present=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" && $gpus_present -gt 0 ]]; then  # Slurm's --gpus* restrict this
    visible=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)
    (( visible < gpus_present )) && gpus_present=$visible
  fi
  GPUS_PER_NODE=${GPUS_PER_NODE:-$gpus_present}
  [[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || fail "GPUS_PER_NODE must be a whole number, got '$GPUS_PER_NODE'"
  if (( GPUS_PER_NODE > gpus_present )); then
    fail "GPUS_PER_NODE=$GPUS_PER_NODE but node $(hostname) has $gpus_present GPU(s) visible" \
         "(nvidia-smi -L, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}); request them with" \
         "sbatch --gpus-per-node=$GPUS_PER_NODE, or use GPUS_PER_NODE=0 for CPU"
  fi
}

plan_launch() {
  if (( GPUS_PER_NODE > 0 )); then
    procs_per_node=$GPUS_PER_NODE
  else
    procs_per_node=1
    export ACCELERATE_USE_CPU=1
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  fi
  NUM_PROCESSES=$(( NNODES * procs_per_node ))
  MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  # A new port per requeue, so a socket of the previous attempt in TIME_WAIT never blocks it.
  MAIN_PORT=${MAIN_PORT:-$(( 20000 + (SLURM_JOB_ID % 3000) * 10 + ${SLURM_RESTART_COUNT:-0} % 10 ))}
  LAUNCH_ARGS=(--num_processes "$NUM_PROCESSES" --num_machines "$NNODES" --mixed_precision no --dynamo_backend no)
  if (( NUM_PROCESSES > 1 )); then  # train.mixed_precision in the config decides precision
    LAUNCH_ARGS+=(--multi_gpu --main_process_ip "$MAIN_HOST" --main_process_port "$MAIN_PORT")
  fi
}

srun_per_node() {
  local kill_on_bad_exit=$1
  shift
  # The launchers ignore SIGUSR1: train.sbatch's trap sends it to every process of the steps, and
  # only the training processes act on it. $SLURM_NODEID is single-quoted: it must expand in each
  # task, on its own node (expanded here, every node would claim rank 0: accelerate#2816).
  # shellcheck disable=SC2016
  exec srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit="$kill_on_bad_exit" \
    --wait=120 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
    bash -c 'trap "" USR1
echo "$0: $(hostname) runs machine_rank=$SLURM_NODEID"
exec "$1" -m fcn_dist.launcher accelerate --machine_rank "$SLURM_NODEID" "${@:2}"' \
    "$FCN_SCRIPT" "$PYTHON" "${LAUNCH_ARGS[@]}" "$@"
}

#!/usr/bin/env bash
# hvdtrain under PBS Pro / OpenPBS (Torque: use "#PBS -l nodes=2:ppn=4:gpus=4"): one rank per GPU, started
# with mpi/hvdtrain-mpirun over the hosts PBS allocated.
#
#   qsub -- mpi/pbs.sh --config configs/digits.yaml run.dir=runs/pbs train.resume=auto
#   (or qsub -v HVDTRAIN_ARGS="--config configs/digits.yaml run.dir=runs/pbs" mpi/pbs.sh)
#
# HVDTRAIN_DRY_RUN=1 prints the launch command instead of running it (works outside PBS too, given a
# PBS_NODEFILE or HVDTRAIN_NP).
#
#PBS -N hvdtrain
#PBS -l select=2:ncpus=32:ngpus=4:mpiprocs=4
#PBS -l walltime=04:00:00
#PBS -j oe
#
# mpiprocs = ranks per node = GPUs per node. PBS_NODEFILE then lists each host once per rank, which is an
# Open MPI hostfile with one slot per line. On CPU nodes, use mpiprocs=<sockets> and give each rank the
# cores of its socket through train.threads_per_rank.
set -euo pipefail

cd "${PBS_O_WORKDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
args=("$@")
if [ ${#args[@]} -eq 0 ] && [ -n "${HVDTRAIN_ARGS:-}" ]; then
  read -r -a args <<< "$HVDTRAIN_ARGS"
fi
if [ -n "${PBS_NODEFILE:-}" ]; then
  [ -f "$PBS_NODEFILE" ] || { echo "pbs.sh: error: PBS_NODEFILE '$PBS_NODEFILE' not found" >&2; exit 2; }
  np="${HVDTRAIN_NP:-$(grep -c . "$PBS_NODEFILE")}"
  cmd=(mpi/hvdtrain-mpirun -np "$np" --hostfile "$PBS_NODEFILE")
else
  np="${HVDTRAIN_NP:-}"
  [ -n "$np" ] || { echo "pbs.sh: error: no PBS_NODEFILE: run it with qsub, or set HVDTRAIN_NP for a local run" >&2; exit 2; }
  cmd=(mpi/hvdtrain-mpirun -np "$np")
fi
[ "${HVDTRAIN_DRY_RUN:-0}" = 1 ] && cmd+=(--dry-run)
exec "${cmd[@]}" -- "${args[@]}"

#!/usr/bin/env bash
# tests/tools/test_kill_campaign.sh — tools/reliability/kill_campaign.sh reduced for CI: 3 rounds per workload
# (ingest with --threads 1 and 2, pretrain, finetune), each a SIGKILL at a random moment (seeded) followed by verify /
# resume and a comparison with an uninterrupted run (the store's content; every file of RUN/ byte for byte). The
# campaign of 50 rounds per workload: docs/RELIABILITY.md.
set -u
M=${MS_MRISAM:?run through ctest}
SRC=${MS_SOURCE_DIR:?run through ctest}
/usr/bin/python3 -c 'import nibabel, lmdb, zstandard, numpy' 2>/dev/null ||
    { echo "skip: python3-nibabel/lmdb/zstandard missing"; exit 77; }
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
T=${MS_BINARY_DIR:?}/tests/tmp_test_kill_campaign
rm -rf "$T"
t0=$(date +%s)
bash "$SRC/tools/reliability/kill_campaign.sh" "$M" --rounds "${MS_KILL_ROUNDS:-3}" --seed "$SEED" --out "$T"
rc=$?
echo "test_kill_campaign: $(( $(date +%s) - t0 )) s"
[ $rc -ne 0 ] || rm -rf "$T"
exit $rc

# tests/finetune/test_nifti_write.sh DRIVER — the NIfTI label writer: three references (oblique LAS-like sform+qform with
# free text and an extension; permuted oblique qform-only with scl_slope; big-endian 4D) are read, mapped to the
# canonical grid and back, written, and checked with nibabel (nifti_check.py): geometry exact, no free text.
set -u
DRV=$1
PY=/usr/bin/python3
HERE="$MS_SOURCE_DIR/tests/finetune"
$PY -c 'import nibabel, numpy' 2>/dev/null || { echo "no python3-nibabel: skipped"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/ms_nifti_write.XXXXXX")
trap 'rm -rf "$T"' EXIT
SEED=${MS_TEST_SEED:-$RANDOM$RANDOM}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
fail=0
$PY "$HERE/nifti_check.py" gen "$T" "$SEED" || exit 1
for pair in "ref_las_oblique.nii.gz out1.nii.gz" "ref_perm_qform.nii out2.nii" "ref_4d_be.nii.gz out3.nii.gz" \
            "ref_perm_qform.nii out4.nii.gz"; do
  set -- $pair
  if ! "$DRV" "$T/$1" "$T/$2"; then echo "FAIL: driver on $1"; fail=1; continue; fi
  $PY "$HERE/nifti_check.py" check "$T/$1" "$T/$2" || fail=1
done
# the written file is on the reference's grid as `mrisam eval` sees it: every class scores Dice 1
if [ -n "${MS_MRISAM:-}" ]; then
  mkdir -p "$T/p" "$T/g" && cp "$T/out1.nii.gz" "$T/p/v.nii.gz" && cp "$T/ref_las_oblique.nii.gz" "$T/g/v.nii.gz"
  if ! "$MS_MRISAM" eval --pred "$T/p" --gt "$T/g" -o "$T/ev" --no-hd95 >/dev/null; then echo "FAIL: eval"; fail=1
  elif tail -n +2 "$T/ev/per_volume.csv" | cut -d, -f4 | grep -vqx "1.00000000"; then
    echo "FAIL: eval of the written labels against their source is not Dice 1"; fail=1
  fi
fi
ls "$T" | grep -q '\.tmp\.' && { echo "FAIL: temporary files left: $(ls "$T")"; fail=1; }
[ $fail = 0 ] && echo "test_nifti_write: all passed"
exit $fail

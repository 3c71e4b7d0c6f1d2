"""tests/data/compare_stores.py A B — the two stores hold the same content: the same volumes (by source hash and
frame), each with the same slices (index and pixel/label bytes), no duplicates, keys 0..n-1 without gaps, and the
same counts. Key order may differ (a resumed ingest commits in the same order, but this does not rely on it)."""
import hashlib
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from storelib import Store  # noqa: E402


def content(path):
    st = Store(path)
    vols = st.volumes()
    out = {}
    n = 0
    for v in vols:
        ident = (v["source_hash"], v["frame"])
        if ident in out:
            raise SystemExit(f"{path}: volume {ident} stored twice")
        sl = []
        for k in range(v["first_key"], v["first_key"] + v["n_slices"]):
            d = st.decode(st.raw(k), check_crc=False)
            lab = st.raw(k, label=True)
            sl.append((d["index"], hashlib.sha256(d["pixels"].tobytes()).hexdigest(),
                       hashlib.sha256(lab[44:]).hexdigest() if lab else None))
            n += 1
        out[ident] = sl
    keys = st.keys(st.slices)
    if keys != list(range(n)):
        raise SystemExit(f"{path}: slice keys are not 0..{n - 1} ({len(keys)} keys)")
    c = st.meta_json("counts")
    if c["volumes"] != len(vols) or c["slices"] != n:
        raise SystemExit(f"{path}: counts {c} disagree with {len(vols)} volumes, {n} slices")
    return out


a, b = content(sys.argv[1]), content(sys.argv[2])
if a != b:
    print("only in A:", sorted(set(a) - set(b))[:5], "only in B:", sorted(set(b) - set(a))[:5])
    diff = [k for k in a if k in b and a[k] != b[k]]
    print("different:", diff[:5])
    sys.exit(1)
print(f"same content: {len(a)} volumes, {sum(len(x) for x in a.values())} slices")

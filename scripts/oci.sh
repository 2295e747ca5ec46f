#!/usr/bin/env bash
# Writes floodgate.wasm as an OCI image layout (no registry, no Docker) in the form Istio's Wasm
# fetcher accepts for `oci://` URLs: one gzip tar layer holding `plugin.wasm` (the "compat"
# variant). Byte-for-byte reproducible: fixed timestamps and owners.
# Usage: scripts/oci.sh [wasm] [out-dir] [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
wasm=${1:-target/wasm32-wasip1/release/floodgate.wasm}
out=${2:-target/oci/floodgate}
tag=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
[ -f "$wasm" ] || { echo "oci: $wasm is missing: run make wasm" >&2; exit 1; }
python3 - "$wasm" "$out" "$tag" <<'PY'
import gzip, hashlib, io, json, os, shutil, sys, tarfile
wasm, out, tag = sys.argv[1:]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(f"{out}/blobs/sha256")
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    with open(f"{out}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{d}", "size": len(data)}
code = open(wasm, "rb").read()
tar_bytes = io.BytesIO()
with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as t:
    info = tarfile.TarInfo("plugin.wasm")
    info.size, info.mode, info.mtime, info.uid, info.gid = len(code), 0o444, 0, 0, 0
    t.addfile(info, io.BytesIO(code))
raw = tar_bytes.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
    g.write(raw)
layer = dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **blob(gz.getvalue()))
config = {"architecture": "wasm", "os": "wasip1", "config": {},
          "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}
config_desc = dict(mediaType="application/vnd.oci.image.config.v1+json",
                   **blob(json.dumps(config, sort_keys=True).encode()))
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc, "layers": [layer],
            "annotations": {"org.opencontainers.image.title": "floodgate.wasm"}}
manifest_desc = dict(mediaType="application/vnd.oci.image.manifest.v1+json",
                     **blob(json.dumps(manifest, sort_keys=True).encode()))
manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, open(f"{out}/index.json", "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(f"{out}/oci-layout", "w"))
print(f"OCI image layout {out} (tag {tag})")
print(f"image digest (WasmPlugin sha256): {manifest_desc['digest'].split(':')[1]}")
print(f"plugin.wasm sha256:               {hashlib.sha256(code).hexdigest()}")
PY

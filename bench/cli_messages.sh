#!/usr/bin/env bash
# What a user sees when a command goes wrong (issue 15): each case's exit code, stderr and stdout
# line counts and the last stderr line, as a markdown table; then a moved demo folder and a damaged
# newest checkpoint. Run from the repository root with .venv active.
# Usage: bash bench/cli_messages.sh DEMO_DIR   (a finished launch/demo.sh output; not modified)
D="${1:?usage: bash bench/cli_messages.sh DEMO_DIR}"
W=$(mktemp -d)
run() {
  local name="$1"; shift
  "$@" >"$W/out" 2>"$W/err"; local rc=$?
  printf '| %s | `%s` | %s | %s | %s | %s |\n' "$name" "$(echo "$*" | sed "s#$D#DEMO#g; s#$W#TMP#g" | cut -c1-110)" \
    "$rc" "$(wc -l <"$W/err")" "$(wc -l <"$W/out")" "$(tail -1 "$W/err" | cut -c1-140 | sed "s#$D#DEMO#g; s#$W#TMP#g")"
}
echo "| case | command | exit | stderr lines | stdout lines | last stderr line |"
echo "|---|---|---|---|---|---|"
P="python -m psvae_jax"
run "missing config file" $P.main --config=configs/nope.py --workdir=$W/a
run "typo in override" $P.main --config=configs/psvae.py:tiny --workdir=$W/b --config.optim.lrr=1
run "stage 3 without autoencoder" $P.main --config=configs/dit.py:tiny --workdir=$W/c
run "missing data folder" $P.main --config=configs/svae.py:tiny --workdir=$W/d --config.data.source=folder --config.data.path=/no/such
run "num_images=0" $P.sample --workdir=$D/dit --prompt=x --num_images=0 --out=$W/e.png
run "strength=2" $P.sample --workdir=$D/dit --prompt=x --strength=2 --out=$W/e.png
run "missing --workdir" $P.sample --prompt=x --out=$W/e.png
run "steps=0" $P.sample --workdir=$D/dit --prompt=x --steps=0 --out=$W/e.png
run "steps=100000" $P.sample --workdir=$D/dit --prompt=x --steps=100000 --out=$W/e.png
run "workdir missing" $P.sample --workdir=/no/such --prompt=x --out=$W/e.png
run "PS-VAE workdir to sample" $P.sample --workdir=$D/psvae --prompt=x --out=$W/e.png
run "--label on a text model" $P.sample --workdir=$D/dit --label=3 --out=$W/e.png
run "--out unknown extension" $P.sample --workdir=$D/dit --prompt="a red circle on the left" --out=$W/x.xyz
run "--cfg=-1" $P.sample --workdir=$D/dit --prompt=x --cfg=-1 --out=$W/e.png
run "cache: existing cache" $P.cache_latents --autoencoder=$D/psvae --data=shapes:num=8 --out=$D/latents
run "cache: missing folder" $P.cache_latents --autoencoder=$D/psvae --data=folder:path=/no/such --out=$W/lat
run "sample OK (4 images)" $P.sample --workdir=$D/dit --prompt="a red circle on the left" --num_images=4 --out=$W/g.png
run "sample OK, unknown word" $P.sample --workdir=$D/dit --prompt="a purple dog" --num_images=1 --out=$W/h.png
run "evaluate OK" $P.evaluate --workdir=$D/dit
echo; echo "nothing created under TMP by the error cases: $(ls $W | grep -v '^out$\|^err$' | tr '\n' ' ')"
cp -r "$D" "$W/moved" && rm -rf "$W/moved/latents"
run "moved demo folder: sample" $P.sample --workdir=$W/moved/dit --prompt="a red circle on the left" --num_images=1 --out=$W/m.png
LAST=$(ls -d $W/moved/dit/checkpoints/[0-9]* | sort -t/ -k1 -V | tail -1)
F=$(find "$LAST" -type f -size +10k | head -1); truncate -s 100 "$F"
run "damaged newest checkpoint: sample" $P.sample --workdir=$W/moved/dit --prompt="a red circle on the left" --num_images=1 --out=$W/n.png
echo "after: $(ls $W/moved/dit/checkpoints | tr '\n' ' ')"

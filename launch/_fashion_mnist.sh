# Sourced by launch/{demo,ablation}.sh with their flags in "$@": when one is --data=fashion_mnist
# and Debian's dataset-fashion-mnist files are missing from IDX_DIR (default
# /usr/share/datasets/fashion-mnist, --idx_dir=DIR), installs the package with apt-get (as root),
# else says how to get them and exits 1.
IDX_DIR=/usr/share/datasets/fashion-mnist
for arg in "$@"; do
  case "$arg" in --idx_dir=*) IDX_DIR="${arg#--idx_dir=}" ;; esac
done
for arg in "$@"; do
  if [ "$arg" = "--data=fashion_mnist" ] && [ ! -f "$IDX_DIR/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "[psvae] installing dataset-fashion-mnist (Debian package) for $IDX_DIR" >&2
      apt-get install -y -q dataset-fashion-mnist >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q dataset-fashion-mnist >&2; }
    else
      echo "[psvae] Fashion-MNIST not found in $IDX_DIR: run 'sudo apt-get install" \
        "dataset-fashion-mnist' (Debian/Ubuntu), or download the four *-ubyte.gz files of" \
        "github.com/zalandoresearch/fashion-mnist and pass --idx_dir=DIR." >&2
      exit 1
    fi
  fi
done

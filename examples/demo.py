"""`make demo`: label-free checkpoint selection with RankMe, end to end, offline, on a CPU (about a minute).

Trains VICReg on scikit-learn's digits without labels, with RankMeCallback on the backbone and the projector
driving ModelCheckpoint and EarlyStopping, then checks RankMe's pick with a linear probe on held-out digits
(the only use of labels). Writes runs/demo/summary.json, runs/demo/rankme_vs_probe.png and an offline W&B run.

    make demo                                   # WANDB_MODE defaults to offline
    .venv/bin/python examples/demo.py --help    # epochs, seed, output folder, --wandb-online, ...

The pipeline lives in rankme.demo (importable, tested); this script only calls it.
"""

from rankme.demo import main

if __name__ == "__main__":
    main()

"""The privacy attacks on what a site sends in its model updates.

- `privacy.updates`: the attacks on one update (analytic, for a fully
  connected first layer; optimisation, Inverting Gradients), which reproduce
  the site's training through study.task's own pieces;
- `privacy.scores`: PSNR / SSIM of reconstructions and of the mean guess;
- `privacy.attack`: the plan of `medfed attack updates`, a site's update,
  what each DP observer holds of it, the run over a study's sites (which it
  reads through a `Federation`) and leakage.json;
- `privacy.report`: leakage.png, leakage.md and the terminal's summary.

Imports study and encryption only; the CLI binds it to a running study in
simulations/attack.py. The ciphertext attacks stay in encryption/attacks.py.
"""

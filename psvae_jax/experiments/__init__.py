"""Experiments and their reports, apart from the library: the ablations (shapes, Fashion-MNIST),
the representation encoders the project trains, the class demo and its figures, the instruction
editing report, the shapes demo's figures, and the one "stage 3 on a latent cache" recipe they
share. The library (models, weights, diffusion, data, train, evals, the inference core) imports
nothing from here (tests/test_layering.py); entry points and experiments import anything below."""

"""Training and evaluation on MP-100: data, episodes, augmentation, losses, the loop (`cape-train`) and the
official test protocol (`cape-eval`). See training/README-section.md for the commands."""

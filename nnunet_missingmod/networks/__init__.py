"""Networks composed from nnU-Net plans. They import no trainer."""

"""Loss terms of the methods, as plain functions and modules on tensors. They import no trainer."""

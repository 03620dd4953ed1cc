"""Server side (edgekws.server): training, evaluation, distillation."""

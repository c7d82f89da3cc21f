"""What the numbers come out as: accuracy and F1 of the choices peftkit makes (imbalance, label scores, small data,
multi-task, int8 students, attention kernels)."""

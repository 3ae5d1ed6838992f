"""Denoisers: networks taking (x_t, t, **cond) and returning their raw prediction."""

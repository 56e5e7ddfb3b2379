"""fp16 graphs: which nodes stay fp32 (policy), the conversion itself (convert), and the guard
that compares a converted graph with fp32 and keeps in fp32 what overflows or drifts (guard)."""

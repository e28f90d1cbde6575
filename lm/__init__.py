"""Language models: KenLM n-grams for beam search (and, later, neural LMs for N-best rescoring)."""

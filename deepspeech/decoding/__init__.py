"""CTC decoding: the hypothesis and decoder protocol (hypothesis), greedy (greedy) and beam search with a language
model (beam, kenlm, language_model), pinyin to characters (hanzi), LM weight tuning (tune)."""

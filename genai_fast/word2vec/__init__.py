"""word2vec with gensim 4's API on genai_fast's SGNS kernels (skip-gram and CBOW, negative sampling).

    from genai_fast.word2vec import Word2Vec
    model = Word2Vec(corpus_file="corpus.txt", vector_size=100, window=5, sg=1, workers=2)
    model.wv.most_similar(positive=["paris", "england"], negative=["france"])
"""

from genai_fast.word2vec.corpus import LineSentence
from genai_fast.word2vec.keyedvectors import KeyedVectors, Word2VecFormatError
from genai_fast.word2vec.model import RULE_DEFAULT, RULE_DISCARD, RULE_KEEP, Word2Vec

__all__ = ["RULE_DEFAULT", "RULE_DISCARD", "RULE_KEEP", "KeyedVectors", "LineSentence", "Word2Vec",
           "Word2VecFormatError"]

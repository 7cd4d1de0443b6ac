"""Training the empty index: block-wise transforms train the same index as faiss's own IndexPreTransform.train."""

import faiss
import numpy as np
import pytest

from index.train import train_in_blocks


@pytest.mark.parametrize("factory", ["PCA16,IVF32,SQ8", "OPQ8_32,IVF32,PQ8np", "PCAR24,IVF16,PQ12x4fs", "IVF32,SQ8"])
def test_block_wise_training_matches_faiss(factory, one_faiss_thread):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3000, 8)) @ rng.standard_normal((8, 64)) + 0.1 * rng.standard_normal((3000, 64)))
    x = x.astype(np.float32)
    ours, theirs = (faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT) for _ in range(2))
    for index in (ours, theirs):
        faiss.extract_index_ivf(index).cp.seed = 5
    train_in_blocks(ours, x, block=700)  # blocks that do not divide the sample
    theirs.train(x)
    assert ours.is_trained and theirs.is_trained
    if isinstance(ours, faiss.IndexPreTransform):
        for i in range(ours.chain.size()):
            a, b = (faiss.downcast_VectorTransform(ix.chain.at(i)) for ix in (ours, theirs))
            np.testing.assert_allclose(faiss.vector_to_array(a.A), faiss.vector_to_array(b.A), rtol=0, atol=1e-5)
    cq = [faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, 16) for ix in (ours, theirs)]
    np.testing.assert_allclose(cq[0], cq[1], rtol=0, atol=1e-3)
    for index in (ours, theirs):
        index.add(x)
        faiss.extract_index_ivf(index).nprobe = 4
    found = [index.search(x[:200], 10)[1] for index in (ours, theirs)]
    assert (found[0] == found[1]).mean() > 0.99

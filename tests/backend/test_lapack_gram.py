"""The back end's float64 kernels under the decompositions: LAPACK's MRRR eigensolver called directly
(scipy's evr, bit for bit, with the GIL let go) and the triangular Gram product."""

import pytest
import torch


@pytest.mark.parametrize(("n", "subset"), [(200, (0, 23)), (40, (10, 39)), (5, (0, 4))])
def test_direct_lapack_eigensolver_is_scipys_evr_bit_for_bit(n, subset):
    import scipy.linalg

    from svdadapt.backend.lapack import eigh

    A = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    G = A @ A.T  # (n, n)
    values, vectors = eigh(G, subset)
    ref_values, ref_vectors = scipy.linalg.eigh(G.numpy(), subset_by_index=list(subset), driver="evr")
    assert torch.equal(values, torch.from_numpy(ref_values))
    assert torch.equal(vectors, torch.from_numpy(ref_vectors))


def test_direct_lapack_eigensolver_lets_go_of_the_gil():
    """Parallel workers' eigensolvers overlap only if the call releases the GIL: a pure-Python
    counter in another thread must make progress while one call runs."""
    import threading

    from svdadapt.backend.lapack import syevr_subset

    A = torch.randn(600, 600, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    G = (A @ A.T).numpy()
    ticks = []
    done = threading.Event()

    def count():  # can only run while the main thread does not hold the GIL
        while not done.is_set():
            ticks.append(1)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        while not ticks:
            pass
        before = len(ticks)
        assert syevr_subset(G, 0, 9) is not None  # tens of ms
        during = len(ticks) - before
    finally:
        done.set()
        thread.join()
    assert during > 1000


@pytest.mark.parametrize("shape", [(300, 250), (40, 700), (1000, 96)])
def test_triangular_gram_product_is_the_full_product_and_symmetric(shape):
    from svdadapt import backend
    from svdadapt.backend.gram import block_width

    X = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    G = backend.on("cpu").gram(X)
    torch.testing.assert_close(G, X.T @ X, rtol=1e-13, atol=1e-12)  # summation order may differ
    b = block_width(shape[1])
    assert torch.equal(G[b:, :b], G[:b, b:].T)  # off-diagonal blocks mirrored exactly

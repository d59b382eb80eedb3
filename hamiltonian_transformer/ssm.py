"""State space layers of the H3 model: FFT causal convolution, diagonal (S4D) SSMs and the shift SSM.

The H3 mixer that combines them sits beside its block in `modeling_h3.py`.

H3: Dao, Fu, Saab, Thomas, Rudra, Ré, "Hungry Hungry Hippos: Towards Language Modeling with State Space Models",
ICLR 2023 (arXiv:2212.14052). Diagonal SSMs and their initialisations: Gu, Gupta, Goel, Ré, "On the Parameterization
and Initialization of Diagonal State Space Models" (S4D), NeurIPS 2022. HiPPO-LegS: Gu, Dao, Ermon, Rudra, Ré, "HiPPO:
Recurrent Memory with Optimal Polynomial Projections", NeurIPS 2020.

Notation used in shapes:
    b  batch
    c  channels (one independent SSM or filter per channel)
    t  time (tokens)
    l  kernel taps (lags)
    n  complex modes of a diagonal SSM: n = d_state // 2, each mode standing for a conjugate pair
    N  real state size d_state (dense reference systems only)

A diagonal SSM keeps x_t = dA x_{t-1} + dB u_t (complex, per mode) and emits y_t = 2 Re(C x_t) + D u_t; the factor 2
adds the conjugate modes that are not stored. Three computations of the same map are kept, each with a literal twin:
    training / prefill   ssm_kernel + fft_causal_conv           O(t log t)
    prefill final state  ssm_state_from_sequence                 one Vandermonde product, no loop over time
    decoding             ssm_step                                O(1) per token
    twins                causal_conv_ref, ssm_recurrence_ref, dense_ssm_ref (dense normal HiPPO-LegS system)
Vandermonde products split dA^l = dA^(j m) dA^i (m ~ sqrt(l)) into a batched matmul of two small factors.
"""

import math
from collections.abc import Iterator

import torch
from torch import nn

SSM_INITS = ("s4d_lin", "s4d_inv", "legs")
DISCRETIZATIONS = ("bilinear", "zoh")


# ---------------------------------------------------------------------------------------------------------------------
# Causal convolution
# ---------------------------------------------------------------------------------------------------------------------


def _fft_length(n: int) -> int:
    """Smallest 5-smooth integer >= n (n >= 1): FFT libraries are fastest on lengths with factors 2, 3 and 5 only."""
    if n < 1:
        raise ValueError(f"FFT length must be at least 1, got {n} (an empty sequence has nothing to convolve).")
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Promoted real dtype of `tensors`, at least float32 (FFTs and complex numbers need it)."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _in_layout_of(reference: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`values` copied into a tensor with `reference`'s strides.

    The mixer's projections are (b, t, c) tensors seen as (b, c, t); returning convolutions in that layout keeps the
    elementwise products that follow on matching strides (several times faster than mixing layouts on CPU).
    """
    return torch.empty_like(reference).copy_(values)


class _CausalFFTConv(torch.autograd.Function):
    """y = irfft(rfft(u) rfft(k))[:t] with a hand-written backward that stays in real FFTs.

    Autograd's own backward of rfft / irfft runs full complex FFTs and builds padding and slicing buffers; here the
    two gradients are correlations, each one real FFT pair: du = irfft(G conj(K))[:t], dk = irfft(sum_b G conj(U))[:l]
    with G = rfft(dy). Zero padding to n >= t + l - 1 keeps every circular wrap-around on zeros.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor, n: int) -> torch.Tensor:
        u_f = torch.fft.rfft(u, n=n)  # (b, c, n // 2 + 1)
        k_f = torch.fft.rfft(k, n=n)  # (c, n // 2 + 1)
        ctx.save_for_backward(u_f, k_f)
        ctx.lengths = (u.shape[-1], k.shape[-1], n)
        return _in_layout_of(u, torch.fft.irfft(u_f * k_f, n=n)[..., : u.shape[-1]])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        u_f, k_f = ctx.saved_tensors
        seq_len, kernel_len, n = ctx.lengths
        grad_f = torch.fft.rfft(grad_y, n=n)  # (b, c, n // 2 + 1)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = _in_layout_of(grad_y, torch.fft.irfft(grad_f * k_f.conj(), n=n)[..., :seq_len])
        if ctx.needs_input_grad[1]:
            grad_k = torch.fft.irfft((grad_f * u_f.conj()).sum(0), n=n)[..., :kernel_len]
        return grad_u, grad_k, None


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Depthwise causal convolution y[..., t] = sum_{s=0}^{t} k[:, s] * u[..., t - s], via real FFTs.

    u: (b, c, t) real; k: (c, l) real, any l (taps beyond t are never reached and are dropped).
    Returns y: (b, c, t) in u's dtype; half-precision inputs are computed in float32. O(t log t).
    """
    if u.dim() != 3 or k.dim() != 2 or k.shape[0] != u.shape[1]:
        raise ValueError(
            f"fft_causal_conv: expected u (b, c, t) and k (c, l) with the same c, got u {tuple(u.shape)} "
            f"and k {tuple(k.shape)}"
        )
    seq_len = u.shape[-1]
    k = k[:, :seq_len]
    # Zero padding to t + l - 1 makes the circular convolution of the FFT equal to the linear one.
    n = _fft_length(seq_len + k.shape[-1] - 1)
    dtype = _compute_dtype(u, k)
    return _CausalFFTConv.apply(u.to(dtype), k.to(dtype), n).to(u.dtype)


def with_skip(k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Kernel k (c, l) with the skip term D (c,) added to its first tap: conv(u, k) + D u = conv(u, with_skip(k, D)).

    Folding D into the (small) kernel saves a full-size multiply and add per SSM, forward and backward.
    """
    return torch.cat([k[:, :1] + D[:, None].to(k.dtype), k[:, 1:]], dim=-1)


def causal_conv_ref(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Literal twin of `fft_causal_conv`: one output step at a time. u: (b, c, t), k: (c, l) -> (b, c, t)."""
    seq_len = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(seq_len):
        past = u[..., : t + 1].flip(-1)[..., : k.shape[-1]]  # (b, c, s): u[t], u[t-1], ...
        y[..., t] = (past * k[:, : past.shape[-1]]).sum(-1)
    return y


# ---------------------------------------------------------------------------------------------------------------------
# Initialisations of the diagonal state matrix (S4D)
# ---------------------------------------------------------------------------------------------------------------------


def _check_d_state(d_state: int) -> None:
    if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state <= 0 or d_state % 2 != 0:
        raise ValueError(
            f"d_state={d_state!r} is not allowed: it must be a positive even integer (d_state // 2 complex modes)"
        )


def s4d_lin(d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-Lin: A_n = -1/2 + i pi n, B_n = 1 for n < d_state / 2. Returns (A, B), complex128 (n,)."""
    _check_d_state(d_state)
    modes = torch.arange(d_state // 2, dtype=torch.float64)
    A = torch.complex(torch.full_like(modes, -0.5), math.pi * modes)
    return A, torch.ones_like(A)


def s4d_inv(d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-Inv: A_n = -1/2 + i N/pi (N/(2n+1) - 1), B_n = 1, N = d_state. Returns (A, B), complex128 (n,)."""
    _check_d_state(d_state)
    modes = torch.arange(d_state // 2, dtype=torch.float64)
    A = torch.complex(torch.full_like(modes, -0.5), d_state / math.pi * (d_state / (2 * modes + 1) - 1))
    return A, torch.ones_like(A)


def hippo_legs_matrix(d_state: int) -> torch.Tensor:
    """HiPPO-LegS state matrix, float64 (N, N): A_ij = -sqrt(2i+1) sqrt(2j+1) (i > j), -(i+1) (i = j), 0 (i < j)."""
    if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state <= 0:
        raise ValueError(f"d_state={d_state!r} is not allowed: it must be a positive integer")
    i = torch.arange(d_state, dtype=torch.float64)
    r = torch.sqrt(2 * i + 1)
    return -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(i + 1)


def hippo_legs_input(d_state: int) -> torch.Tensor:
    """HiPPO-LegS input vector, float64 (N,): B_i = sqrt(2i + 1)."""
    return torch.sqrt(2 * torch.arange(d_state, dtype=torch.float64) + 1)


def hippo_legs_normal(d_state: int) -> torch.Tensor:
    """Normal part of HiPPO-LegS, float64 (N, N): A + P P^T with P_i = sqrt(i + 1/2), which is -I/2 + skew."""
    p = torch.sqrt(torch.arange(d_state, dtype=torch.float64) + 0.5)
    return hippo_legs_matrix(d_state) + p[:, None] * p[None, :]


def legs_eigendecomposition(d_state: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diagonalise the normal part of HiPPO-LegS (S4D-LegS), keeping one eigenvalue of each conjugate pair.

    Returns (A, B, V): A complex128 (n,) the eigenvalues with positive imaginary part (increasing), V complex128
    (N, n) their orthonormal eigenvectors, B = V^* B_legs complex128 (n,). A real output row c (N,) of the dense
    system becomes C = c V in the diagonal one, with y = 2 Re(C x).
    """
    _check_d_state(d_state)
    normal = hippo_legs_normal(d_state)
    skew = normal + 0.5 * torch.eye(d_state, dtype=torch.float64)
    # -i S is Hermitian for a real skew-symmetric S; its real eigenvalues w give the eigenvalues i w of S.
    w, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # (N,), (N, N); w ascending, in +- pairs
    w, V = w[d_state // 2 :], vectors[:, d_state // 2 :]
    A = torch.complex(torch.full_like(w, -0.5), w)
    B = V.conj().T @ hippo_legs_input(d_state).to(torch.complex128)
    return A, B, V


def legs(d_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-LegS: (A, B) of the diagonalised normal HiPPO-LegS matrix, complex128 (n,) each."""
    A, B, _ = legs_eigendecomposition(d_state)
    return A, B


_INITIALISERS = {"s4d_lin": s4d_lin, "s4d_inv": s4d_inv, "legs": legs}


# ---------------------------------------------------------------------------------------------------------------------
# Diagonal SSM ops
# ---------------------------------------------------------------------------------------------------------------------


def discretize(
    log_dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, method: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discrete (dA, dB) of the continuous diagonal system x' = A x + B u with step dt = exp(log_dt).

    bilinear: dA = (1 + dt A/2) / (1 - dt A/2), dB = dt B / (1 - dt A/2);  zoh: dA = exp(dt A), dB = (dA - 1) / A B.
    log_dt: (c,) real; A, B: (c, n) complex. Returns dA, dB: (c, n) complex.
    """
    if method not in DISCRETIZATIONS:
        raise ValueError(f"discretization={method!r} is not allowed; allowed values: {', '.join(DISCRETIZATIONS)}")
    dt = torch.exp(log_dt)[:, None]  # (c, 1)
    dtA = dt * A  # (c, n)
    if method == "bilinear":
        denominator = 1 - dtA / 2
        return (1 + dtA / 2) / denominator, dt * B / denominator
    dA = torch.exp(dtA)
    return dA, (dA - 1) / A * B


def _split_powers(dA: torch.Tensor, length: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Factors of the Vandermonde matrix dA^l, l = j m + i < length, m = ceil(sqrt(length)): dA^l = dA^(j m) dA^i.

    dA: (c, n) complex. Returns ((low.real, low.imag) (c, n, m): dA^i for i < m, (high.real, high.imag)
    (c, length / m, n): dA^(j m)), real tensors computed as |dA|^e (cos, sin)(e arg dA), each laid out the way the
    matmul that consumes it reads it (a transposed operand would make every elementwise op around it strided).
    Multiplying the factors inside a matmul never forms the (c, n, l) matrix, which would dominate memory and time at
    long lengths; real arithmetic keeps the ops vectorised on CPU, where complex exp and products (and their backward)
    are not.
    """
    m = math.isqrt(length - 1) + 1 if length > 1 else 1
    log_dA = torch.log(dA)  # (c, n)
    exponents = torch.arange(m, device=dA.device, dtype=dA.real.dtype)
    low = _exp_times(log_dA[..., :, None], exponents)  # (c, n, m)
    high = _exp_times(log_dA[..., None, :], m * exponents[: -(-length // m), None])  # (c, j, n)
    return low, high


def _exp_times(z: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of exp(z e) for complex z and real e that broadcast: e^(Re z e) (cos, sin)(Im z e)."""
    magnitude = torch.exp(z.real * e)
    angle = z.imag * e
    return magnitude * torch.cos(angle), magnitude * torch.sin(angle)


def _vandermonde_real(w: torch.Tensor, dA: torch.Tensor, length: int) -> torch.Tensor:
    """Re sum_n w_n dA_n^l for l < length: w (..., c, n), dA (c, n) complex -> (..., c, l) real.

    Re(w dA^(j m) dA^i) = Re(w dA^(j m)) Re(dA^i) - Im(w dA^(j m)) Im(dA^i): one real batched matmul over 2n.
    """
    (low_re, low_im), (high_re, high_im) = _split_powers(dA, length)
    w_re, w_im = w.real[..., None, :], w.imag[..., None, :]  # (..., c, 1, n)
    left = torch.cat([w_re * high_re - w_im * high_im, -(w_re * high_im + w_im * high_re)], dim=-1)  # (.., c, j, 2n)
    right = torch.cat([low_re, low_im], dim=-2)  # (c, 2n, i)
    blocks = left @ right  # (..., c, j, 2n) @ (c, 2n, i) -> (..., c, j, i)
    return blocks.flatten(-2)[..., :length]


def _vandermonde_transpose(v: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """sum_l v_l dA_n^l: v (..., c, l) real or complex, dA (c, n) complex -> (..., c, n) complex."""
    length = v.shape[-1]
    low, high = (torch.complex(*parts) for parts in _split_powers(dA, length))
    v = nn.functional.pad(v, (0, low.shape[-1] * high.shape[-2] - length))
    v = v.unflatten(-1, (high.shape[-2], low.shape[-1])).to(dA.dtype)  # (..., c, j, i)
    blocks = v @ low.transpose(-1, -2)  # (..., c, j, i) @ (c, i, n) -> (..., c, j, n)
    return (blocks * high).sum(-2)


def ssm_kernel(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, length: int) -> torch.Tensor:
    """Convolution kernel of the diagonal SSM: K_l = 2 Re(sum_n C_n dB_n dA_n^l), l < length.

    dA, dB, C: (c, n) complex. Returns K: (c, l) real.
    """
    return _vandermonde_real(2 * C * dB, dA, length)


def ssm_initial_state_response(x0: torch.Tensor, dA: torch.Tensor, C: torch.Tensor, length: int) -> torch.Tensor:
    """Output contributed by an initial state x0 (the state before the first input): 2 Re(sum_n C_n dA_n^(t+1) x0_n).

    x0: (b, c, n) complex; dA, C: (c, n) complex. Returns (b, c, t) real.
    """
    return _vandermonde_real(2 * C * dA * x0, dA, length)


def ssm_state_from_sequence(
    u: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor, initial_state: torch.Tensor | None = None
) -> torch.Tensor:
    """State after consuming u: x_T = dA^T x0 + sum_s dA^(T-1-s) dB u_s, as one Vandermonde product.

    u: (b, c, t) real; dA, dB: (c, n) complex; initial_state x0: (b, c, n) complex or None (zeros).
    Returns x_T: (b, c, n) complex.
    """
    state = dB * _vandermonde_transpose(u.flip(-1), dA)  # (b, c, n); flipped so u_s meets dA^(T-1-s)
    if initial_state is not None:
        state = state + torch.exp(u.shape[-1] * torch.log(dA)) * initial_state
    return state


def ssm_step(
    x: torch.Tensor, u_t: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step: x_new = dA x + dB u_t, y_t = 2 Re(sum_n C_n x_new) + D u_t.

    x: (b, c, n) complex; u_t: (b, c) real; dA, dB, C: (c, n) complex; D: (c,) real.
    Returns (y_t (b, c) real, x_new (b, c, n) complex).
    """
    x_new = dA * x + dB * u_t[..., None].to(dB.dtype)  # (b, c, n)
    y = 2 * (C * x_new).sum(-1).real + D * u_t  # (b, c)
    return y, x_new


def ssm_recurrence_ref(
    u: torch.Tensor,
    dA: torch.Tensor,
    dB: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Literal twin of the diagonal SSM: a Python loop of x_t = dA x_{t-1} + dB u_t, y_t = 2 Re(C x_t) + D u_t.

    u: (b, c, t) real; dA, dB, C: (c, n) complex; D: (c,) real; initial_state: (b, c, n) complex or None (zeros).
    Returns (y (b, c, t) real, final state (b, c, n) complex).
    """
    batch, channels, seq_len = u.shape
    if initial_state is None:
        x = torch.zeros(batch, channels, dA.shape[-1], dtype=dA.dtype, device=dA.device)
    else:
        x = initial_state
    ys = []
    for t in range(seq_len):
        x = dA * x + dB * u[:, :, t, None]
        ys.append(2 * (C * x).sum(-1).real + D * u[:, :, t])
    return torch.stack(ys, dim=-1), x


def dense_ssm_ref(
    u: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    log_dt: torch.Tensor,
    method: str = "zoh",
) -> torch.Tensor:
    """Literal dense SSM with a full real state matrix, discretised per channel and looped over time: y_t = C_c x_t.

    zoh: dA = matrix_exp(dt A), dB = A^{-1} (dA - I) B; bilinear: dA = (I - dt A/2)^{-1} (I + dt A/2),
    dB = (I - dt A/2)^{-1} dt B. u: (b, c, t); A: (N, N); B: (N,); C: (c, N); log_dt: (c,). Returns y: (b, c, t).
    """
    if method not in DISCRETIZATIONS:
        raise ValueError(f"discretization={method!r} is not allowed; allowed values: {', '.join(DISCRETIZATIONS)}")
    batch, channels, seq_len = u.shape
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    y = torch.zeros_like(u)
    for c in range(channels):
        dt = torch.exp(log_dt[c])
        if method == "zoh":
            dA = torch.linalg.matrix_exp(dt * A)
            dB = torch.linalg.solve(A, (dA - eye) @ B)
        else:
            dA = torch.linalg.solve(eye - dt * A / 2, eye + dt * A / 2)
            dB = torch.linalg.solve(eye - dt * A / 2, dt * B)
        x = torch.zeros(batch, A.shape[0], dtype=A.dtype, device=A.device)
        for t in range(seq_len):
            x = x @ dA.T + u[:, c, t, None] * dB
            y[:, c, t] = x @ C[c]
    return y


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


def check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: it must be a positive integer")


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected}")


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision parameters (a model cast to bf16) are upcast: complex half tensors do not exist."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class ShiftSSM(nn.Module):
    """Shift SSM of H3: state matrix = shift, so the SSM is a learned causal depthwise filter of kernel_size taps.

    y_t = sum_{s < kernel_size} taps[:, s] u_{t-s} + D u_t. With B = e_1 (the paper's), the taps are the SSM's C
    (`weight`). With `trainable_b` (the H3 code's: it registers B as a parameter), B (`B`, starting at e_1) is
    trained too and the taps are the cross-correlation taps[:, j] = sum_i B[:, i] C[:, i + j]: the same filter
    family, reached through a product of two vectors. C is initialised like a depthwise Conv1d
    (U(-1/sqrt(kernel_size), 1/sqrt(kernel_size))) and D ~ N(0, 1), as in the H3 code. B carries `_ssm_param`
    (the H3 code gives it the SSM learning rate and no weight decay); C and D are ordinary weights.
    Decoding keeps a window of the last kernel_size inputs (oldest first, current last).
    """

    def __init__(self, channels: int, kernel_size: int, trainable_b: bool = False):
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("kernel_size", kernel_size)
        self.channels = channels
        self.kernel_size = kernel_size
        self.trainable_b = trainable_b
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))  # C: (c, l)
        self.D = nn.Parameter(torch.empty(channels))  # (c,)
        if trainable_b:
            self.B = nn.Parameter(torch.empty(channels, kernel_size))  # (c, l)
            self.B._ssm_param = True
        self.reset_parameters()

    @property
    def ssm_param_names(self) -> tuple[str, ...]:
        return ("B",) if self.trainable_b else ()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.kernel_size)
        self.weight.uniform_(-bound, bound)
        self.D.normal_()
        if self.trainable_b:
            self.B.zero_()
            self.B[:, 0] = 1.0

    def taps(self) -> torch.Tensor:
        """The filter (c, kernel_size): C, or with a trainable B the cross-correlation of B with C."""
        if not self.trainable_b:
            return self.weight
        n = self.kernel_size
        B_f = torch.fft.rfft(at_least_float32(self.B), n=2 * n)
        C_f = torch.fft.rfft(at_least_float32(self.weight), n=2 * n)
        return torch.fft.irfft(B_f.conj() * C_f, n=2 * n)[..., :n].to(self.weight.dtype)

    def forward(self, u: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """u: (b, c, t) -> (b, c, t). window: (b, c, kernel_size) inputs preceding u (oldest first), or None (zeros)."""
        kernel = with_skip(self.taps(), self.D)
        if window is None:
            return fft_causal_conv(u, kernel)
        check_shape("conv_state", window, (u.shape[0], self.channels, self.kernel_size))
        history = torch.cat([window.to(u.dtype), u], dim=-1)  # (b, c, kernel_size + t)
        return fft_causal_conv(history, kernel)[..., self.kernel_size :]

    def roll_window(self, window: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        """Window after appending u: the last kernel_size of (window, u). window: (b, c, l) or None; u: (b, c, t)."""
        if window is None:
            window = u.new_zeros(u.shape[0], self.channels, self.kernel_size)
        check_shape("conv_state", window, (u.shape[0], self.channels, self.kernel_size))
        return torch.cat([window.to(u.dtype), u], dim=-1)[..., -self.kernel_size :]

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """Output at the newest input. window: (b, c, kernel_size), oldest first, current last -> (b, c)."""
        return (window * self.taps().flip(-1)).sum(-1) + self.D * window[..., -1]


class DiagonalSSM(nn.Module):
    """Diagonal (S4D) SSM, one per channel: x_t = dA x_{t-1} + dB u_t, y_t = 2 Re(C x_t) + D u_t.

    A = -exp(log_neg_A_real) + i A_imag keeps Re A < 0 (a stable system) under any update; B and C are complex,
    stored as real tensors with a trailing dimension 2; log dt ~ U[log dt_min, log dt_max] per channel;
    C ~ CN(0, 1) * B and D ~ N(0, 1) as in the H3 code. All six parameters carry `_ssm_param = True` (no weight
    decay, own learning rate; see `ssm_parameter_names`).
    """

    ssm_param_names = ("log_dt", "log_neg_A_real", "A_imag", "B", "C", "D")

    def __init__(
        self,
        channels: int,
        d_state: int,
        init: str = "s4d_lin",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        discretization: str = "bilinear",
    ):
        super().__init__()
        check_positive_int("channels", channels)
        _check_d_state(d_state)
        if init not in SSM_INITS:
            raise ValueError(f"init={init!r} is not allowed; allowed values: {', '.join(SSM_INITS)}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"discretization={discretization!r} is not allowed; allowed values: {', '.join(DISCRETIZATIONS)}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min!r}, dt_max={dt_max!r} are not allowed: need 0 < dt_min <= dt_max")
        self.channels = channels
        self.d_state = d_state
        self.init = init
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.discretization = discretization
        modes = d_state // 2
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_neg_A_real = nn.Parameter(torch.empty(channels, modes))
        self.A_imag = nn.Parameter(torch.empty(channels, modes))
        self.B = nn.Parameter(torch.empty(channels, modes, 2))
        self.C = nn.Parameter(torch.empty(channels, modes, 2))
        self.D = nn.Parameter(torch.empty(channels))
        for name in self.ssm_param_names:
            getattr(self, name)._ssm_param = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        A, B = _INITIALISERS[self.init](self.d_state)  # (n,) complex128 each
        self.log_dt.uniform_(math.log(self.dt_min), math.log(self.dt_max))
        self.log_neg_A_real.copy_(torch.log(-A.real).expand_as(self.log_neg_A_real))
        self.A_imag.copy_(A.imag.expand_as(self.A_imag))
        self.B.copy_(torch.view_as_real(B).expand_as(self.B))
        C = torch.randn(self.channels, self.d_state // 2, dtype=torch.complex128) * B  # (c, n)
        self.C.copy_(torch.view_as_real(C))
        self.D.normal_()

    def _A(self) -> torch.Tensor:
        return torch.complex(-torch.exp(at_least_float32(self.log_neg_A_real)), at_least_float32(self.A_imag))

    def _C(self) -> torch.Tensor:
        return torch.view_as_complex(at_least_float32(self.C))

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dA, dB): (c, n) complex, at least complex64."""
        B = torch.view_as_complex(at_least_float32(self.B))
        return discretize(at_least_float32(self.log_dt), self._A(), B, self.discretization)

    def kernel(self, length: int) -> torch.Tensor:
        """Convolution kernel (c, length), real."""
        dA, dB = self.discretize()
        return ssm_kernel(dA, dB, self._C(), length)

    def forward(self, u: torch.Tensor, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        """u: (b, c, t) real -> y (b, c, t) in u's dtype. initial_state: (b, c, n) complex state before u, or None."""
        dA, dB = self.discretize()
        C = self._C()
        seq_len = u.shape[-1]
        y = fft_causal_conv(u, with_skip(ssm_kernel(dA, dB, C, seq_len), self.D))  # (b, c, t)
        if initial_state is not None:
            check_shape("initial_state", initial_state, (u.shape[0], self.channels, self.d_state // 2))
            y = y + ssm_initial_state_response(initial_state.to(dA.dtype), dA, C, seq_len)
        return y.to(u.dtype)

    def final_state(self, u: torch.Tensor, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        """State after consuming u (b, c, t), starting from initial_state (b, c, n) complex or zeros -> (b, c, n)."""
        dA, dB = self.discretize()
        if initial_state is not None:
            check_shape("initial_state", initial_state, (u.shape[0], self.channels, self.d_state // 2))
            initial_state = initial_state.to(dA.dtype)
        return ssm_state_from_sequence(u, dA, dB, initial_state)

    def step(self, u_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: u_t (b, c) real, state (b, c, n) complex or None (zeros) -> (y_t (b, c), new state)."""
        dA, dB = self.discretize()
        if state is None:
            state = torch.zeros(u_t.shape[0], self.channels, self.d_state // 2, dtype=dA.dtype, device=dA.device)
        check_shape("state", state, (u_t.shape[0], self.channels, self.d_state // 2))
        y, state = ssm_step(state.to(dA.dtype), u_t, dA, dB, self._C(), self.D)
        return y.to(u_t.dtype), state


def ssm_parameter_names(module: nn.Module) -> Iterator[str]:
    """Full names of the SSM parameters (every DiagonalSSM's, a trainable shift B) under `module`, for optimizer
    parameter groups.

    Goes by module type and name, so it still works where loading replaced the parameter objects (and with them
    their `_ssm_param` attribute).
    """
    for prefix, submodule in module.named_modules():
        if isinstance(submodule, (DiagonalSSM, ShiftSSM)):
            for name in submodule.ssm_param_names:
                yield f"{prefix}.{name}" if prefix else name

"""Equivalence tests of hamiltonian_transformer.ssm and the H3 mixer: every fast path against its literal twin."""

import copy

import pytest
import torch

from hamiltonian_transformer.modeling_h3 import H3Mixer
from hamiltonian_transformer.ssm import (
    DISCRETIZATIONS,
    SSM_INITS,
    DiagonalSSM,
    ShiftSSM,
    causal_conv_ref,
    dense_ssm_ref,
    discretize,
    fft_causal_conv,
    hippo_legs_input,
    hippo_legs_matrix,
    hippo_legs_normal,
    legs_eigendecomposition,
    ssm_kernel,
    ssm_parameter_names,
    ssm_recurrence_ref,
    with_skip,
)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.is_complex():
        actual, expected = torch.view_as_real(actual), torch.view_as_real(expected)
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


# --- FFT causal convolution -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_len", [1, 7, 50, 80], ids=lambda n: f"taps{n}")
def test_fft_causal_conv_matches_direct_loop_for_short_and_long_kernels(kernel_len):
    u = torch.randn(2, 3, 50, dtype=torch.float64)
    k = torch.randn(3, kernel_len, dtype=torch.float64)
    assert relative_error(fft_causal_conv(u, k), causal_conv_ref(u, k)) < 1e-12


@pytest.mark.parametrize("kernel_len", [5, 50], ids=lambda n: f"taps{n}")
def test_fft_causal_conv_backward_matches_the_direct_loop(kernel_len):
    """The hand-written FFT backward (correlations) against autograd through the literal loop."""
    u = torch.randn(2, 3, 40, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, kernel_len, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(2, 3, 40, dtype=torch.float64)
    fast = torch.autograd.grad(fft_causal_conv(u, k), (u, k), grad_y)
    literal = torch.autograd.grad(causal_conv_ref(u, k), (u, k), grad_y)
    for actual, expected in zip(fast, literal):
        assert relative_error(actual, expected) < 1e-12
    assert torch.autograd.gradcheck(fft_causal_conv, (u[:1, :, :12], k[:, :6]))


def test_fft_causal_conv_returns_the_input_layout_with_the_same_values():
    """A (b, t, c) tensor seen as (b, c, t) comes back in that layout, with the values and gradient of a copy."""
    u = torch.randn(2, 30, 3, requires_grad=True)
    u_copy = u.detach().transpose(1, 2).contiguous().requires_grad_()
    k, grad_y = torch.randn(3, 7), torch.randn(2, 3, 30)
    y = fft_causal_conv(u.transpose(1, 2), k)
    y_copy = fft_causal_conv(u_copy, k)
    assert y.stride() == u.transpose(1, 2).stride()
    assert torch.equal(y, y_copy)
    y.backward(grad_y)
    y_copy.backward(grad_y)
    assert torch.allclose(u.grad.transpose(1, 2), u_copy.grad, atol=1e-6)


def test_with_skip_folds_the_skip_term_into_the_first_tap():
    u, k, D = torch.randn(2, 3, 20, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64), torch.randn(3)
    assert relative_error(fft_causal_conv(u, with_skip(k, D)), causal_conv_ref(u, k) + D[:, None].double() * u) < 1e-12


def test_fft_causal_conv_computes_half_precision_in_float32_and_returns_input_dtype():
    u = torch.randn(2, 3, 40)
    k = torch.randn(3, 40)
    y = fft_causal_conv(u.bfloat16(), k)
    assert y.dtype == torch.bfloat16
    assert relative_error(y, causal_conv_ref(u.bfloat16().float(), k)) < 1e-2


def test_fft_causal_conv_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="same c"):
        fft_causal_conv(torch.randn(2, 3, 10), torch.randn(4, 5))


# --- Diagonal SSM ops -------------------------------------------------------------------------------------------------


def float64_twin(ssm: DiagonalSSM):
    """(dA, dB, C, D) of a float64 copy of `ssm`, for the literal references."""
    ssm64 = copy.deepcopy(ssm).double()
    dA, dB = ssm64.discretize()
    return dA, dB, ssm64._C(), ssm64.D.detach()


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_ssm_kernel_is_the_impulse_response_of_the_recurrence(discretization):
    ssm = DiagonalSSM(3, 8, discretization=discretization).double()
    dA, dB, C, _ = float64_twin(ssm)
    impulse = torch.zeros(1, 3, 30, dtype=torch.float64)
    impulse[..., 0] = 1
    response, _ = ssm_recurrence_ref(impulse, dA, dB, C, torch.zeros(3, dtype=torch.float64))
    assert relative_error(ssm_kernel(dA, dB, C, 30), response[0]) < 1e-12


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("init", SSM_INITS)
def test_diagonal_ssm_fft_forward_recurrent_steps_and_literal_loop_agree(init, discretization):
    ssm = DiagonalSSM(4, 16, init=init, discretization=discretization)
    u = torch.randn(2, 4, 1024, dtype=torch.float64)
    y_ref, state_ref = ssm_recurrence_ref(u, *float64_twin(ssm))

    with torch.no_grad():
        y_fft = ssm(u.float())
        state, y_steps = None, []
        for t in range(u.shape[-1]):
            y_t, state = ssm.step(u[:, :, t].float(), state)
            y_steps.append(y_t)
    assert relative_error(y_fft, y_ref) < 1e-4
    assert relative_error(torch.stack(y_steps, dim=-1), y_ref) < 1e-4
    assert relative_error(state, state_ref) < 1e-4


@pytest.mark.parametrize("init", SSM_INITS)
def test_final_state_matches_literal_loop_and_chunks_compose(init):
    ssm = DiagonalSSM(3, 8, init=init, discretization="zoh").double()
    u = torch.randn(2, 3, 96, dtype=torch.float64)
    u1, u2 = u[..., :37], u[..., 37:]
    y_ref, state_ref = ssm_recurrence_ref(u, *float64_twin(ssm))
    with torch.no_grad():
        state1 = ssm.final_state(u1)
        assert relative_error(ssm.final_state(u), state_ref) < 1e-10
        assert relative_error(ssm.final_state(u2, initial_state=state1), state_ref) < 1e-10
        assert relative_error(ssm(u2, initial_state=state1), y_ref[..., 37:]) < 1e-10


def test_normal_legs_matrix_is_minus_half_identity_plus_skew_and_its_eigendecomposition_holds():
    d_state = 8
    normal = hippo_legs_normal(d_state)
    assert torch.allclose(normal + normal.T, -torch.eye(d_state, dtype=torch.float64))
    A, B, V = legs_eigendecomposition(d_state)
    assert A.shape == B.shape == (d_state // 2,)
    assert torch.all(A.imag > 0) and torch.allclose(A.real, torch.full_like(A.real, -0.5))
    assert torch.allclose(normal.to(V.dtype) @ V, V * A, atol=1e-10)
    assert torch.allclose(V.conj().T @ V, torch.eye(d_state // 2, dtype=V.dtype), atol=1e-12)
    # The normal part differs from LegS itself by the rank-one term P P^T only.
    assert torch.linalg.matrix_rank(normal - hippo_legs_matrix(d_state)) == 1


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_diagonal_legs_system_equals_dense_normal_legs_system(discretization):
    d_state, channels = 8, 2
    A, B, V = legs_eigendecomposition(d_state)
    C_dense = torch.randn(channels, d_state, dtype=torch.float64)
    log_dt = torch.log(torch.tensor([0.01, 0.1], dtype=torch.float64))
    u = torch.randn(2, channels, 200, dtype=torch.float64)

    y_dense = dense_ssm_ref(u, hippo_legs_normal(d_state), hippo_legs_input(d_state), C_dense, log_dt, discretization)
    dA, dB = discretize(log_dt, A.expand(channels, -1), B.expand(channels, -1), discretization)
    C = C_dense.to(torch.complex128) @ V  # (c, n): the dense output row in the eigenbasis
    y_diagonal = fft_causal_conv(u, ssm_kernel(dA, dB, C, u.shape[-1]))
    assert relative_error(y_diagonal, y_dense) < 1e-10


# --- Modules ----------------------------------------------------------------------------------------------------------


def shift_steps(shift: ShiftSSM, u: torch.Tensor) -> torch.Tensor:
    """The shift SSM's outputs one input at a time through its rolling window: u (b, c, t) -> (b, c, t)."""
    window, steps = None, []
    for t in range(u.shape[-1]):
        window = shift.roll_window(window, u[..., t : t + 1])
        steps.append(shift.step(window))
    return torch.stack(steps, dim=-1)


def test_shift_ssm_window_steps_match_forward_and_continuation():
    shift = ShiftSSM(3, 5)
    u = torch.randn(2, 3, 12)
    with torch.no_grad():
        y = shift(u)
        assert torch.allclose(shift_steps(shift, u), y, atol=1e-5)
        assert torch.allclose(shift(u[..., 7:], shift.roll_window(None, u[..., :7])), y[..., 7:], atol=1e-5)
        assert torch.allclose(y, causal_conv_ref(u, shift.weight) + shift.D[:, None] * u, atol=1e-5)


def test_shift_ssm_with_trainable_b_filters_with_b_cross_correlated_with_c():
    shift = ShiftSSM(3, 5, trainable_b=True)
    torch.testing.assert_close(shift.taps(), shift.weight, atol=1e-6, rtol=0)  # B starts at e_1: the paper's
    with torch.no_grad():
        shift.B.normal_()
    B, C = shift.B.detach(), shift.weight.detach()
    literal = torch.stack([sum(B[:, i] * C[:, i + j] for i in range(5 - j)) for j in range(5)], dim=-1)
    torch.testing.assert_close(shift.taps().detach(), literal, atol=1e-6, rtol=1e-5)
    u = torch.randn(2, 3, 12)
    with torch.no_grad():
        y = shift(u)
        assert torch.allclose(y, causal_conv_ref(u, literal) + shift.D[:, None] * u, atol=1e-5)
        assert torch.allclose(shift_steps(shift, u), y, atol=1e-5)
    shift(u).sum().backward()
    assert shift.B.grad is not None and shift.B.grad.abs().sum() > 0
    assert shift.B._ssm_param and shift.ssm_param_names == ("B",) and ShiftSSM(3, 5).ssm_param_names == ()


def test_diagonal_ssm_parameters_are_marked_for_optimizer_groups():
    mixer = H3Mixer(8, d_state=4, shift_kernel_size=3)
    marked = {name for name, p in mixer.named_parameters() if getattr(p, "_ssm_param", False)}
    assert marked == set(ssm_parameter_names(mixer))
    assert marked == {f"diag_ssm.{name}" for name in ("log_dt", "log_neg_A_real", "A_imag", "B", "C", "D")}
    trainable_b = H3Mixer(8, d_state=4, shift_kernel_size=3, shift_trainable_b=True)
    marked = {name for name, p in trainable_b.named_parameters() if getattr(p, "_ssm_param", False)}
    assert marked == set(ssm_parameter_names(trainable_b)) and "shift_ssm.B" in marked


def test_diagonal_ssm_starts_stable_with_log_dt_in_range():
    ssm = DiagonalSSM(64, 8, init="s4d_inv", dt_min=1e-3, dt_max=1e-1)
    dA, _ = ssm.discretize()
    assert torch.all(dA.abs() < 1)
    dt = ssm.log_dt.exp()
    assert torch.all(dt >= 1e-3 * (1 - 1e-6)) and torch.all(dt <= 1e-1 * (1 + 1e-6))


def literal_h3(mixer: H3Mixer, x: torch.Tensor) -> torch.Tensor:
    """H3 written per head and per (key index i, value index j), with the literal SSM loop. x: (b, t, hidden)."""
    d = mixer.head_dim
    q, k, v = (proj(x).transpose(1, 2).double() for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    k = causal_conv_ref(k, mixer.shift_ssm.weight.double()) + mixer.shift_ssm.D.double()[:, None] * k
    dA, dB, C, D = float64_twin(mixer.diag_ssm)
    out = torch.zeros_like(q)
    for h in range(mixer.num_heads):
        head = slice(h, h + 1)
        for i in range(d):
            for j in range(d):
                u = k[:, h * d + i, None] * v[:, h * d + j, None]  # (b, 1, t)
                s, _ = ssm_recurrence_ref(u, dA[head], dB[head], C[head], D[head])
                out[:, h * d + j] += q[:, h * d + i] * s[:, 0]
    return mixer.o_proj(out.transpose(1, 2).float())


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_mixer_matches_per_head_literal_formula(head_dim):
    mixer = H3Mixer(8, head_dim=head_dim, d_state=8, shift_kernel_size=4)
    x = torch.randn(2, 20, 8)
    with torch.no_grad():
        out, _, _ = mixer(x)
        assert relative_error(out, literal_h3(mixer, x)) < 1e-5


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_mixer_prefill_then_steps_equals_full_forward(head_dim):
    mixer = H3Mixer(8, head_dim=head_dim, d_state=8, shift_kernel_size=4)
    x = torch.randn(2, 24, 8)
    with torch.no_grad():
        full, _, _ = mixer(x)
        prefix, conv_inputs, ssm_state = mixer(x[:, :10], return_states=True)
        assert conv_inputs.shape == (2, 8, 10) and ssm_state.shape == (2, 8 * head_dim, 4, 2)
        conv_state = mixer.shift_ssm.roll_window(None, conv_inputs)
        steps = [prefix]
        for t in range(10, x.shape[1]):
            out, conv_inputs, ssm_state = mixer.step(x[:, t : t + 1], conv_state, ssm_state)
            assert conv_inputs.shape == (2, 8, 1)
            conv_state = mixer.shift_ssm.roll_window(conv_state, conv_inputs)
            steps.append(out)
    assert relative_error(torch.cat(steps, dim=1), full) < 1e-4


@pytest.mark.parametrize("head_dim", [1, 2])
def test_h3_mixer_chunked_prefill_equals_one_forward_including_states(head_dim):
    mixer = H3Mixer(8, head_dim=head_dim, d_state=8, shift_kernel_size=6)
    x = torch.randn(2, 30, 8)
    with torch.no_grad():
        full, inputs_full, ssm_full = mixer(x, return_states=True)
        chunks, conv_state, ssm_state = [], None, None
        for chunk in x.split([4, 1, 25], dim=1):  # shorter than the shift window, a single token, the rest
            out, conv_inputs, ssm_state = mixer(chunk, None, conv_state, ssm_state, return_states=True)
            conv_state = mixer.shift_ssm.roll_window(conv_state, conv_inputs)
            chunks.append(out)
    assert relative_error(torch.cat(chunks, dim=1), full) < 1e-5
    assert relative_error(conv_state, mixer.shift_ssm.roll_window(None, inputs_full)) < 1e-6
    assert relative_error(ssm_state, ssm_full) < 1e-5


def test_h3_mixer_left_padding_leaves_real_tokens_and_states_unchanged():
    mixer = H3Mixer(8, head_dim=2, d_state=8, shift_kernel_size=4)
    real = torch.randn(1, 12, 8)
    padded = torch.cat([torch.randn(1, 5, 8), real], dim=1)  # pad embeddings are arbitrary, not zero
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 12)], dim=1).bool()
    with torch.no_grad():
        out, conv_inputs, ssm_state = mixer(real, return_states=True)
        out_padded, inputs_padded, ssm_padded = mixer(padded, mask, return_states=True)
        next_token = torch.randn(1, 1, 8)
        step, _, _ = mixer.step(next_token, mixer.shift_ssm.roll_window(None, conv_inputs), ssm_state)
        step_padded, _, _ = mixer.step(next_token, mixer.shift_ssm.roll_window(None, inputs_padded), ssm_padded)
    assert relative_error(out_padded[:, 5:], out) < 1e-5
    assert relative_error(ssm_padded, ssm_state) < 1e-5
    assert relative_error(step_padded, step) < 1e-5


def test_h3_mixer_masked_positions_anywhere_do_not_influence_other_tokens():
    mixer = H3Mixer(8, head_dim=2, d_state=8, shift_kernel_size=4)
    x = torch.randn(2, 16, 8)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 3:6] = False
    mask[1, 9] = False
    other = torch.where(mask[..., None], x, torch.randn_like(x))  # different content at masked positions only
    with torch.no_grad():
        out, _, ssm_state = mixer(x, mask, return_states=True)
        out_other, _, ssm_other = mixer(other, mask, return_states=True)
    assert relative_error(out[mask], out_other[mask]) < 1e-6
    assert relative_error(ssm_other, ssm_state) < 1e-6


def test_h3_mixer_backward_reaches_every_parameter_with_finite_gradients():
    mixer = H3Mixer(8, head_dim=2, d_state=8, shift_kernel_size=4, ssm_init="legs", discretization="zoh")
    x = torch.randn(2, 16, 8, requires_grad=True)
    out, _, ssm_state = mixer(x, torch.ones(2, 16), return_states=True)
    (out.square().mean() + ssm_state.square().mean()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_h3_mixer_runs_in_bfloat16_close_to_float32():
    mixer = H3Mixer(8, head_dim=2, d_state=8, shift_kernel_size=4)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        out32, conv_inputs, ssm_state = mixer(x, return_states=True)
        mixer_bf16 = copy.deepcopy(mixer).bfloat16()
        out16, _, _ = mixer_bf16(x.bfloat16())
        conv_state = mixer.shift_ssm.roll_window(None, conv_inputs)
        step16, _, _ = mixer_bf16.step(x[:, :1].bfloat16(), conv_state.bfloat16(), ssm_state)
    assert out16.dtype == step16.dtype == torch.bfloat16
    assert relative_error(out16, out32) < 5e-2


# --- Argument validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DiagonalSSM(4, 7), r"d_state=7 .*positive even integer"),
        (lambda: DiagonalSSM(4, 0), r"d_state=0 .*positive even integer"),
        (lambda: DiagonalSSM(4, 8, init="hippo"), r"init='hippo' .*s4d_lin, s4d_inv, legs"),
        (lambda: DiagonalSSM(4, 8, discretization="euler"), r"discretization='euler' .*bilinear, zoh"),
        (lambda: DiagonalSSM(4, 8, dt_min=0.1, dt_max=0.01), r"dt_min=0.1, dt_max=0.01"),
        (lambda: DiagonalSSM(0, 8), r"channels=0 .*positive integer"),
        (lambda: ShiftSSM(4, 0), r"kernel_size=0 .*positive integer"),
        (lambda: H3Mixer(8, head_dim=3), r"head_dim=3 .*divide hidden_size=8"),
        (lambda: H3Mixer(8, d_state=5), r"d_state=5 .*positive even integer"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_argument_and_allowed_values(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_state_shapes_raise_value_error():
    mixer = H3Mixer(8, head_dim=2, d_state=8, shift_kernel_size=4)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="conv_state"):
        mixer(x, conv_state=torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="ssm_state"):
        mixer.step(x[:, :1], ssm_state=torch.zeros(2, 8, 4, 2))
    with pytest.raises(ValueError, match="one token"):
        mixer.step(x)

"""NumPy float64 transcriptions of the published RMSProp/AdaGrad rules the ports reproduce.

Written from the sources' update rules (PyTorch ``torch/optim/rmsprop.py`` and ``adagrad.py``,
Keras 3 ``keras/src/optimizers/rmsprop.py``, ``adagrad.py`` and ``base_optimizer.py``, TF1's
``ApplyRMSProp``/``ApplyCenteredRMSProp`` kernels, Graves 2013 eqs. 38-41, DQN's
``NeuralQLearner.lua``), literally and with no safety of our own: the centered variance is not
clamped, so where the sources go NaN, so do these. Independent of ``optax_rmsprop``: they share
no code with it, and the live tests check them against the peers themselves.

Every optimizer holds a list of parameter arrays, updates them in place in ``step(grads)`` and
takes its learning rate as a number or a callable of the number of steps taken so far (0 for
the first step), which is how the tests emulate setting the framework's learning rate before each
step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Rate = float | Callable[[int], float]


class _Reference:
  """Common bookkeeping: a list of float64 parameters, a step counter, the rate for this step."""

  def __init__(self, params: Sequence[np.ndarray], lr: Rate):
    self.params = [np.array(p, dtype=np.float64) for p in params]
    self.lr = lr
    self.t = 0  # steps taken so far

  def rate(self) -> float:
    return float(self.lr(self.t)) if callable(self.lr) else float(self.lr)

  def zeros(self) -> list[np.ndarray]:
    return [np.zeros_like(p) for p in self.params]


class TorchRMSprop(_Reference):
  """``torch.optim.RMSprop``: eps outside the root, lr outside the momentum buffer, coupled L2."""

  def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
               maximize=False):
    super().__init__(params, lr)
    self.alpha, self.eps, self.wd, self.momentum = alpha, eps, weight_decay, momentum
    self.centered, self.maximize = centered, maximize
    self.square_avg, self.grad_avg, self.buf = self.zeros(), self.zeros(), self.zeros()

  def step(self, grads):
    lr = self.rate()
    for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
      g = -g if self.maximize else g
      if self.wd != 0:
        g = g + self.wd * p
      self.square_avg[i] = self.alpha * self.square_avg[i] + (1 - self.alpha) * g * g
      if self.centered:
        self.grad_avg[i] = self.grad_avg[i] + (1 - self.alpha) * (g - self.grad_avg[i])
        avg = np.sqrt(self.square_avg[i] - self.grad_avg[i] ** 2)
      else:
        avg = np.sqrt(self.square_avg[i])
      avg = avg + self.eps
      if self.momentum > 0:
        self.buf[i] = self.momentum * self.buf[i] + g / avg
        p -= lr * self.buf[i]
      else:
        p -= lr * (g / avg)
    self.t += 1


class TorchAdagrad(_Reference):
  """``torch.optim.Adagrad``: clr = lr / (1 + (t-1) lr_decay), eps outside the root, coupled L2."""

  def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
    super().__init__(params, lr)
    self.lr_decay, self.wd, self.eps = lr_decay, weight_decay, eps
    self.sum = [np.full_like(p, initial_accumulator_value) for p in self.params]

  def step(self, grads):
    lr = self.rate()
    step = self.t + 1
    for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
      if self.wd != 0:
        g = g + self.wd * p
      clr = lr / (1 + (step - 1) * self.lr_decay)
      self.sum[i] = self.sum[i] + g * g
      p -= clr * (g / (np.sqrt(self.sum[i]) + self.eps))
    self.t += 1


def keras_float32_rate(lr: Rate) -> Rate:
  """Keras keeps a constant learning rate in a float32 variable (a schedule's value is not rounded)."""
  return lr if callable(lr) else float(np.float32(lr))


class _KerasBase(_Reference):
  """Keras 3's ``BaseOptimizer.apply``: clip the gradients, decay the weights, then step."""

  def __init__(self, params, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
    super().__init__(params, keras_float32_rate(learning_rate))
    self.wd, self.clipnorm, self.clipvalue, self.global_clipnorm = weight_decay, clipnorm, clipvalue, global_clipnorm

  def clip(self, grads):
    if self.clipnorm:
      return [g * self.clipnorm / max(np.sqrt(np.sum(g * g)), self.clipnorm) for g in grads]
    if self.global_clipnorm:
      norm = np.sqrt(sum(np.sum(g * g) for g in grads))
      scale = self.global_clipnorm * min(1.0 / norm, 1.0 / self.global_clipnorm)
      return [g * scale for g in grads]
    if self.clipvalue:
      return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
    return list(grads)

  def step(self, grads):
    lr = self.rate()
    grads = self.clip(grads)
    if self.wd is not None:
      for p in self.params:
        p -= p * self.wd * lr
    for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
      self.update_step(i, p, g, lr)
    self.t += 1

  def update_step(self, i, p, g, lr):
    raise NotImplementedError


class KerasRMSprop(_KerasBase):
  """``keras.optimizers.RMSprop``: eps inside the root, lr inside the momentum buffer."""

  def __init__(self, params, learning_rate=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **base):
    super().__init__(params, learning_rate, **base)
    self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered
    self.velocity, self.average_grad, self.mom = self.zeros(), self.zeros(), self.zeros()

  def update_step(self, i, p, g, lr):
    self.velocity[i] = self.rho * self.velocity[i] + (1 - self.rho) * g * g
    if self.centered:
      self.average_grad[i] = self.rho * self.average_grad[i] + (1 - self.rho) * g
      denominator = self.velocity[i] - self.average_grad[i] ** 2 + self.epsilon
    else:
      denominator = self.velocity[i] + self.epsilon
    increment = lr * g / np.sqrt(denominator)
    if self.momentum > 0:
      self.mom[i] = self.momentum * self.mom[i] + increment
      p -= self.mom[i]
    else:
      p -= increment


class KerasAdagrad(_KerasBase):
  """``keras.optimizers.Adagrad``: accumulator from 0.1, eps inside the root."""

  def __init__(self, params, learning_rate=1e-3, initial_accumulator_value=0.1, epsilon=1e-7, **base):
    super().__init__(params, learning_rate, **base)
    self.epsilon = epsilon
    self.acc = [np.full_like(p, initial_accumulator_value) for p in self.params]

  def update_step(self, i, p, g, lr):
    self.acc[i] = self.acc[i] + g * g
    p -= lr * g / np.sqrt(self.acc[i] + self.epsilon)


class TF1RMSProp(_Reference):
  """TF1 ``RMSPropOptimizer`` kernels: ms from 1, eps inside the root, a momentum slot always."""

  def __init__(self, params, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, centered=False):
    super().__init__(params, learning_rate)
    self.decay, self.momentum, self.epsilon, self.centered = decay, momentum, epsilon, centered
    self.ms = [np.ones_like(p) for p in self.params]
    self.mg, self.mom = self.zeros(), self.zeros()

  def step(self, grads):
    lr = self.rate()
    for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
      self.ms[i] += (g * g - self.ms[i]) * (1 - self.decay)
      if self.centered:
        self.mg[i] += (g - self.mg[i]) * (1 - self.decay)
        denom = (self.ms[i] - self.mg[i] ** 2) + self.epsilon
      else:
        denom = self.ms[i] + self.epsilon
      self.mom[i] = self.mom[i] * self.momentum + (g * lr) / np.sqrt(denom)
      p -= self.mom[i]
    self.t += 1


class GravesRMSProp(_Reference):
  """Graves 2013, eqs. 38-41: n, g-bar, Delta with aleph (decay), beth (momentum), gimel (lr), daleth (eps)."""

  def __init__(self, params, learning_rate=1e-4, decay=0.95, momentum=0.9, eps=1e-4):
    super().__init__(params, learning_rate)
    self.aleph, self.beth, self.daleth = decay, momentum, eps
    self.n, self.gbar, self.delta = self.zeros(), self.zeros(), self.zeros()

  def step(self, grads):
    gimel = self.rate()
    for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
      self.n[i] = self.aleph * self.n[i] + (1 - self.aleph) * g**2  # (38)
      self.gbar[i] = self.aleph * self.gbar[i] + (1 - self.aleph) * g  # (39)
      root = np.sqrt(self.n[i] - self.gbar[i] ** 2 + self.daleth)
      self.delta[i] = self.beth * self.delta[i] - gimel * g / root  # (40)
      p += self.delta[i]  # (41)
    self.t += 1


class DQNRMSProp(_Reference):
  """DQN's ``NeuralQLearner:qLearnMinibatch`` step, written for a loss gradient ``g`` (theirs ascends -g)."""

  def __init__(self, params, learning_rate=2.5e-4, decay=0.95, eps=0.01):
    super().__init__(params, learning_rate)
    self.decay, self.eps = decay, eps
    self.g, self.g2 = self.zeros(), self.zeros()

  def step(self, grads):
    lr = self.rate()
    for i, (p, dw) in enumerate(zip(self.params, grads, strict=True)):
      dw = -dw  # their dw points uphill of the loss
      self.g[i] = self.g[i] * self.decay + (1 - self.decay) * dw
      self.g2[i] = self.g2[i] * self.decay + (1 - self.decay) * dw * dw
      tmp = np.sqrt(-(self.g[i] * self.g[i]) + self.g2[i] + self.eps)
      p += lr * dw / tmp
    self.t += 1

"""placeholder"""
from .inference import lstm_forward
from .training import DataParallelTrainer, loss_and_gradients, train_step

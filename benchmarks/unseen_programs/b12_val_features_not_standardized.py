"""Broken: a tabular pipeline standardises the training features with a StandardScaler but the validation
DataLoader is built from the raw features (scaler.transform forgotten). Breast cancer, raw features span 0-4000."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import torch
from harness import run
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

from lightning_sanity.demos import Classifier, mlp

if __name__ == "__main__":
    pl.seed_everything(int(os.environ.get("QA_SEED", 0)), verbose=False)
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train)

    def tensors(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long))

    train = DataLoader(tensors(x_train, y_train), batch_size=32, shuffle=True)
    val = DataLoader(tensors(x_val, y_val), batch_size=64)  # bug: scaler.transform(x_val) forgotten
    run(Classifier(mlp(30, 2), lr=3e-3), train, val, kind="broken", bug="val features not standardised", max_epochs=6)

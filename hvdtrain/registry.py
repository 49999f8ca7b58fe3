"""The backends hvdtrain has, in one table: what every other module asks about a backend by its name (its
package and modules, framework, model file, export formats). Framework-neutral: it imports no framework."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendInfo:
    """One backend: `package` holds backend.py (the Backend class), augment.py, export.py and portable.py."""

    name: str                         # the config's `backend` value
    package: str                      # torch_backend, tf_backend
    backend_class: str                # the Backend implementation in package.backend
    framework: str                    # as users call it, in messages
    model_kind: str                   # what a user's model builder must return, in messages
    framework_modules: tuple[str, ...]  # top-level modules that mean this framework is loaded
    model_file: str                   # a finished run's final model, in its run directory
    export_formats: tuple[str, ...]   # `export --format` values, the default first

    def module(self, part: str) -> str:
        """The backend's module `part` ("backend", "augment", "export", "portable")."""
        return f"{self.package}.{part}"


BACKENDS: dict[str, BackendInfo] = {info.name: info for info in (
    BackendInfo("torch", "torch_backend", "TorchBackend", "PyTorch", "a torch.nn.Module", ("torch",), "model.pt",
                ("onnx", "torch-export")),
    BackendInfo("tensorflow", "tf_backend", "TensorFlowBackend", "Keras", "a Keras 3 model (keras.Model)",
                ("keras", "tensorflow", "tf_keras"), "model.keras", ("savedmodel", "onnx")),
)}
BACKEND_NAMES = tuple(BACKENDS)


def other_backend(name: str) -> BackendInfo:
    """The backend that is not `name` (convert's other side)."""
    return next(info for other, info in BACKENDS.items() if other != name)

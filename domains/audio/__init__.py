"""Audio: folders of WAV/FLAC (``data``), the frozen log-mel representation and its Griffin-Lim
inverse (``mel``), the evaluation classifier (``classifier``) and DiffWave-style metrics (``metrics``).
See docs/audio.md."""

from .domain import AudioDomain
from .output import save_spectrograms, spectrogram_png
from .unet import MelUNet, build_unet
from .classifier import MelClassifier, MelCNN, load_classifier, train_classifier
from .data import (AUDIO_EXTENSIONS, FSDD_PATTERN, FSDD_SPLIT, AudioClips, EveryKSplit, GroupSplit, crop_or_pad,
                   fsdd_root, list_audio_files, load_audio_file, load_audio_folder, load_fsdd)
from .mel import (DEFAULT_MEL, MelConfig, MelConfigMismatch, denormalise_mel, frame_times, mel_db, mel_filterbank,
                  mel_frequencies, mel_to_linear, mel_to_waveform, num_frames, stft_magnitude, waveform_to_mel)
from .metrics import (accuracy, am_score, evaluate_samples, fid, frechet_distance, gaussian_stats, inception_score,
                      kmeans, log_spectral_distance, mel_cepstral_distortion, modified_inception_score, ndb_k,
                      per_class_fid, spectral_convergence)

__all__ = ["AudioDomain", "MelUNet", "build_unet", "save_spectrograms", "spectrogram_png",
           "MelClassifier", "MelCNN", "load_classifier", "train_classifier",
           "AUDIO_EXTENSIONS", "FSDD_PATTERN", "FSDD_SPLIT", "AudioClips", "EveryKSplit", "GroupSplit", "crop_or_pad",
           "fsdd_root", "list_audio_files", "load_audio_file", "load_audio_folder", "load_fsdd",
           "DEFAULT_MEL", "MelConfig", "MelConfigMismatch", "denormalise_mel", "frame_times", "mel_db",
           "mel_filterbank", "mel_frequencies", "mel_to_linear", "mel_to_waveform", "num_frames", "stft_magnitude",
           "waveform_to_mel",
           "accuracy", "am_score", "evaluate_samples", "fid", "frechet_distance", "gaussian_stats", "inception_score",
           "kmeans", "log_spectral_distance", "mel_cepstral_distortion", "modified_inception_score", "ndb_k",
           "per_class_fid", "spectral_convergence"]

"""The shared helpers every notebook imports: ``import lungseg_utils as lu``.

One name per job, gathered from the topic modules in ``lungseg/``:

==================  =========================================================================
lungseg.data        read_slice, read_mask, check_hu, find_pairs, verify_pairs, summarise,
                    check_lung_stats, pixel_area_mm2, write_json, read_json, LungsegError
lungseg.download    get_dataset (Kaggle / folder / archive / synthetic), find_kaggle_credentials,
                    install_archive, safe_extract_zip
lungseg.preprocess  window_hu, resize_image, resize_mask, preprocess_slice, make_split,
                    load_arrays, check_img_size
lungseg.losses      dice_coef, iou_coef, bce_dice_loss  (Keras 3, registered as serializable)
lungseg.models      unet, resunet, build_segmenter, conv_block, residual_block
lungseg.training    augment_pair, make_dataset, load_training_inputs, train_model,
                    load_trained_model, check_training_settings, describe_device,
                    library_versions, config_table, training_summary
lungseg.evaluate    overlap_scores, hd95, score_slice, pooled_dice, paired_comparison, summary_rows,
                    clean_mask, lung_measurements, load_split_originals, score_native,
                    predict_probabilities, predict_masks, predict_folder
lungseg.plotting    show_pairs, plot_history, error_overlay, mask_overlay, data_label, save_figure
==================  =========================================================================

Importing this module registers the loss and metrics with Keras, so saved models load with
plain ``keras.saving.load_model(path)``.
"""

from lungseg.data import (LungsegError, check_hu, check_lung_stats, find_pairs, pixel_area_mm2, read_json,
                          read_mask, read_slice, summarise, verify_pairs, write_json)
from lungseg.download import find_kaggle_credentials, get_dataset, install_archive, safe_extract_zip
from lungseg.evaluate import (clean_mask, hd95, load_split_originals, lung_measurements,
                              overlap_scores, paired_comparison, pooled_dice, predict_folder, predict_masks,
                              predict_probabilities, score_native, score_slice, summary_rows)
from lungseg.losses import bce_dice_loss, dice_coef, iou_coef
from lungseg.models import build_segmenter, conv_block, residual_block, resunet, unet
from lungseg.plotting import data_label, error_overlay, mask_overlay, plot_history, save_figure, show_pairs
from lungseg.preprocess import (check_img_size, load_arrays, make_split, preprocess_slice, resize_image,
                                resize_mask, window_hu)
from lungseg.training import (augment_pair, check_training_settings, config_table, describe_device,
                              library_versions, load_trained_model, load_training_inputs, make_dataset,
                              train_model, training_summary)

__all__ = [
    "augment_pair", "bce_dice_loss", "build_segmenter", "check_hu", "check_img_size",
    "check_lung_stats", "check_training_settings", "config_table", "conv_block", "data_label", "describe_device",
    "dice_coef", "error_overlay", "find_kaggle_credentials", "find_pairs", "get_dataset", "hd95",
    "install_archive", "iou_coef", "clean_mask", "library_versions", "load_arrays",
    "load_split_originals", "load_trained_model", "load_training_inputs", "lung_measurements",
    "LungsegError", "make_dataset", "make_split", "mask_overlay", "overlap_scores",
    "paired_comparison", "pixel_area_mm2", "plot_history", "pooled_dice", "predict_folder",
    "predict_masks", "predict_probabilities", "preprocess_slice", "read_json", "read_mask",
    "read_slice", "residual_block", "resize_image", "resize_mask", "resunet", "safe_extract_zip",
    "save_figure", "score_native", "score_slice", "show_pairs", "summarise", "summary_rows",
    "train_model", "training_summary", "unet", "verify_pairs", "window_hu", "write_json",
]

"""Feature columns, like tf.feature_column: how raw features become the model's dense input.

Each column knows its parse spec (`parse_spec`, merged by `make_parse_example_spec`) and how to
turn the features a receiver produced into graph tensors. Dense columns (numeric, bucketized,
embedding, indicator) give a float32 [batch, d] block (`dense`); categorical columns (vocabulary
list/file, hash bucket, bucketized) give int64 ids as a SparseTensor (`sparse_ids`) in
[0, num_buckets). `input_layer` concatenates the dense blocks in sorted column-name order, as TF does.

Features may be parsed (FixedLenFeature -> dense, VarLenFeature -> SparseTensor) or fed raw: a
categorical column fed a dense [batch] or [batch, k] tensor drops b"" and -1 entries, as TF does.

One module per kind of column (`numeric`, `categorical`, `dense_views`) beside what they share
(`base`); this package is the public entry point, as `tf.feature_column` is.
"""

from exporter.feature_columns.base import (
    CategoricalColumn,
    DenseColumn,
    FeatureColumn,
    Features,
    dense_columns,
    input_layer,
    make_parse_example_spec,
    safe_name,
    sorted_columns,
)
from exporter.feature_columns.categorical import (
    HashedColumn,
    VocabularyColumn,
    categorical_column_with_hash_bucket,
    categorical_column_with_vocabulary_file,
    categorical_column_with_vocabulary_list,
)
from exporter.feature_columns.dense_views import (
    EmbeddingColumn,
    IndicatorColumn,
    embedding_column,
    indicator_column,
)
from exporter.feature_columns.numeric import (
    BucketizedColumn,
    NumericColumn,
    bucketized_column,
    numeric_column,
)

__all__ = [
    "BucketizedColumn",
    "CategoricalColumn",
    "DenseColumn",
    "EmbeddingColumn",
    "FeatureColumn",
    "Features",
    "HashedColumn",
    "IndicatorColumn",
    "NumericColumn",
    "VocabularyColumn",
    "bucketized_column",
    "categorical_column_with_hash_bucket",
    "categorical_column_with_vocabulary_file",
    "categorical_column_with_vocabulary_list",
    "dense_columns",
    "embedding_column",
    "indicator_column",
    "input_layer",
    "make_parse_example_spec",
    "numeric_column",
    "safe_name",
    "sorted_columns",
]

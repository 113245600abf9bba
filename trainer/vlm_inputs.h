// Input embeddings of a vision-language sample: token embeddings with the projected image features spliced in
// at the image-token positions (the vision tower and projector run outside carve).
#pragma once

#include <torch/torch.h>

#include "model/transformer.h"

namespace carve::trainer {

// tokens [b, l] int64; image_rows [r, hidden] in any float dtype, consumed in order by the positions holding
// image_token_id (row-major), so each sample's rows follow its image tokens. Returns [b, l, hidden].
torch::Tensor embed_with_images(model::CausalLMImpl& lm, const torch::Tensor& tokens, int64_t image_token_id,
                                const torch::Tensor& image_rows);

}  // namespace carve::trainer

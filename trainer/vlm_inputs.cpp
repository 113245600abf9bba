#include "trainer/vlm_inputs.h"

#include "base/error.h"

namespace carve::trainer {

torch::Tensor embed_with_images(model::CausalLMImpl& lm, const torch::Tensor& tokens, int64_t image_token_id,
                                const torch::Tensor& image_rows) {
  auto embeds = lm.embed(tokens);
  if (!image_rows.defined() || image_token_id < 0) return embeds;
  auto is_image = tokens == image_token_id;
  const int64_t positions = is_image.sum().item<int64_t>();
  CARVE_CHECK(positions == image_rows.size(0), "the batch has ", positions, " image tokens but ", image_rows.size(0),
              " image rows");
  CARVE_CHECK(image_rows.size(1) == embeds.size(2), "image rows have ", image_rows.size(1),
              " values, the model's hidden size is ", embeds.size(2));
  if (positions == 0) return embeds;
  // index_put_ fills the masked positions in row-major order: sample by sample, image token by image token.
  return embeds.index_put({is_image}, image_rows.to(embeds.device(), embeds.scalar_type()));
}

}  // namespace carve::trainer

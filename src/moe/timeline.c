/* Names of the CUDA backend's timeline sites (moe/timeline.h). */
#include "moe/timeline.h"

#define MXM_TIMELINE_NAME_(id, name) name,
const char *const mxm_timeline_site_names[MXM_SITES] = {MXM_TIMELINE_SITES(MXM_TIMELINE_NAME_)};
#undef MXM_TIMELINE_NAME_

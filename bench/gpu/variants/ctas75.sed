s/^#define MLWQ_MIN_CTAS 1 /#define MLWQ_MIN_CTAS 7 /
s/^#define MLWQ_MIN_CTAS_FUSED 1 /#define MLWQ_MIN_CTAS_FUSED 5 /

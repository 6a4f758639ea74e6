/* Segment a video with the lrformerseg GStreamer element from C, reading results from the bus.
 *
 *   eval "$(lrformer-gst --env)"          # GST_PLUGIN_PATH and the embedded Python's packages
 *   ./lrformer-seg in.mp4 out.webm [model.onnx] [overlay|mask]
 *
 * Output container by suffix: .webm (vp8enc ! webmmux) or .avi (jpegenc ! avimux). One line per frame
 * from the element's "lrformerseg" messages, then a summary. Exit status: 0 done, 1 pipeline error
 * (the element's message is printed), 2 usage. */
#include <gst/gst.h>
#include <stdio.h>
#include <string.h>

static void print_frame(const GstStructure *s)
{
    guint64 frame = 0, pts = GST_CLOCK_TIME_NONE;
    gdouble infer_ms = 0.0;
    const GValue *names = gst_structure_get_value(s, "names");
    const GValue *shares = gst_structure_get_value(s, "shares");
    gst_structure_get_uint64(s, "frame", &frame);
    gst_structure_get_uint64(s, "pts", &pts);
    gst_structure_get_double(s, "infer-ms", &infer_ms);
    printf("frame %" G_GUINT64_FORMAT " pts %" GST_TIME_FORMAT " infer %.1f ms:", frame, GST_TIME_ARGS(pts), infer_ms);
    guint n = (names && shares) ? gst_value_array_get_size(names) : 0;
    for (guint i = 0; i < n && i < 5; i++)  /* the five largest classes */
        printf(" %s %.1f%%", g_value_get_string(gst_value_array_get_value(names, i)),
               100.0 * g_value_get_double(gst_value_array_get_value(shares, i)));
    printf("\n");
}

int main(int argc, char **argv)
{
    gst_init(&argc, &argv);
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s INPUT OUTPUT.webm|OUTPUT.avi [MODEL] [overlay|mask]\n", argv[0]);
        return 2;
    }
    const char *input = argv[1], *output = argv[2];
    const char *model = argc > 3 ? argv[3] : NULL, *mode = argc > 4 ? argv[4] : "overlay";
    /* avenc_mpeg4 ! mp4mux wrote only a header on Debian 12's GStreamer 1.22; these two write playable files. */
    const char *encoder = g_str_has_suffix(output, ".avi") ? "jpegenc ! avimux" : "vp8enc deadline=1 ! webmmux";
    gchar *model_prop = model ? g_strdup_printf("model=\"%s\"", model) : g_strdup("");
    gchar *desc = g_strdup_printf(
        "filesrc location=\"%s\" ! decodebin ! videoconvert ! queue ! lrformerseg name=seg %s mode=%s "
        "! queue ! videoconvert ! %s ! filesink location=\"%s\"", input, model_prop, mode, encoder, output);
    GError *err = NULL;
    GstElement *pipeline = gst_parse_launch(desc, &err);
    g_free(desc);
    g_free(model_prop);
    if (err) {
        fprintf(stderr, "error: %s\n", err->message);
        g_clear_error(&err);
        if (pipeline)
            gst_object_unref(pipeline);
        return 1;
    }

    GstBus *bus = gst_element_get_bus(pipeline);
    gint64 start = g_get_monotonic_time();
    guint64 frames = 0;
    gdouble infer_total = 0.0;
    int status = 0;
    /* A failed state change (e.g. a missing model) still leaves the element's error on the bus. */
    gboolean started = gst_element_set_state(pipeline, GST_STATE_PLAYING) != GST_STATE_CHANGE_FAILURE;
    for (gboolean done = FALSE; !done;) {
        GstMessage *msg = gst_bus_timed_pop_filtered(bus, started ? GST_CLOCK_TIME_NONE : 0,
                                                     GST_MESSAGE_ERROR | GST_MESSAGE_EOS | GST_MESSAGE_ELEMENT);
        if (!msg) {  /* state change failed and nobody said why */
            fprintf(stderr, "error: the pipeline could not start\n");
            status = 1;
            break;
        }
        const GstStructure *s = gst_message_get_structure(msg);
        switch (GST_MESSAGE_TYPE(msg)) {
        case GST_MESSAGE_ELEMENT:
            if (s && gst_structure_has_name(s, "lrformerseg")) {
                gdouble ms = 0.0;
                gst_structure_get_double(s, "infer-ms", &ms);
                infer_total += ms;
                frames++;
                print_frame(s);
            }
            break;
        case GST_MESSAGE_ERROR: {
            gchar *debug = NULL;
            gst_message_parse_error(msg, &err, &debug);
            fprintf(stderr, "error: %s (from %s)\n", err->message, GST_OBJECT_NAME(GST_MESSAGE_SRC(msg)));
            g_clear_error(&err);
            g_free(debug);
            status = 1;
            done = TRUE;
            break;
        }
        case GST_MESSAGE_EOS:
            done = TRUE;
            break;
        default:
            break;
        }
        gst_message_unref(msg);
    }
    gst_element_set_state(pipeline, GST_STATE_NULL);
    gdouble wall = (g_get_monotonic_time() - start) / 1e6;
    if (status == 0)
        printf("summary: %" G_GUINT64_FORMAT " frames in %.2f s (%.1f frames/s), mean inference %.1f ms -> %s\n",
               frames, wall, wall > 0 ? frames / wall : 0.0, frames ? infer_total / frames : 0.0, output);
    gst_object_unref(bus);
    gst_object_unref(pipeline);
    return status;
}

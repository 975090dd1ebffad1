from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('agents', '0005_mcpserver'),
    ]

    operations = [
        migrations.AddField(
            model_name="agentexecution",
            name="redispatch_count",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="agentexecution",
            name="redispatched_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
